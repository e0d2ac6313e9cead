"""`fs360 serve webdav`: the same sessions, files, `.create` and status files as the mount,
served over WebDAV (WsgiDAV on cheroot) for Windows Explorer, macOS Finder, davfs2 and
containers without /dev/fuse.

The provider (provider.py) is an adapter over the path model `fs.model.MountModel`, as
`fs/fuse_ops.py` is for FUSE: every rule comes from the model, and its errors' errnos
become HTTP statuses in one place (errors.py). A PUT is one writer (writers.py) that
succeeds only when its whole body came. server.py builds the WSGI app and its access
rules (loopback, or Basic auth and TLS).

Threads (`fs360 serve webdav` only)
  fs360-webdav       cheroot's server (server.py), which hands each request to one of its own
                     THREADS workers (cheroot's names: CP Server Thread-N)
  fs360-webdav-held  short-lived: the grace time of a file whose last PUT was empty
                     (writers.HeldEmptyFiles), one timer per such file

Locks: `Fs360Provider._writing_lock` (the paths a PUT or COPY writes) is a leaf.
`HeldEmptyFiles._lock` is taken alone, except that its expiry asks WsgiDAV's lock manager
(its own lock, a leaf) whether a client holds a lock on the file; neither is ever held
around the path model's calls (the engine's state lock).
"""
