"""`fs360 serve webdav`: the same sessions, files, `.create` and status files as the mount,
served over WebDAV (WsgiDAV on cheroot) for Windows Explorer, macOS Finder, davfs2 and
containers without /dev/fuse.

The provider (provider.py) is an adapter over the path model `fs.model.MountModel`, as
`fs/fuse_ops.py` is for FUSE: every rule comes from the model, and its errors' errnos
become HTTP statuses in one place (errors.py). A PUT is one writer (writers.py) that
succeeds only when its whole body came. server.py builds the WSGI app and its access
rules (loopback, or Basic auth and TLS).
"""
