"""The mount's path model: every filesystem operation of semantics.md, without FUSE.

The FUSE adapter (`fuse_ops.py`) only translates calls into these methods and
`Fs360Error`s into errnos, so everything here is tested without a mount.
MountModel resolves each path once (tree.py) and hands the node to the part whose job
it is: .create (markers.py), open files (open_files.py), renames (renames.py).
"""

from __future__ import annotations

import errno
import logging
import os
import time

from ..config import Settings
from ..engine.engine import Engine
from ..engine.projects import project_page
from ..engine.records import P_READY
from ..errors import (AccessDenied, AlreadyExists, Fs360Error, InvalidArgument, IsADirectory, NoAttribute,
                      NotADirectory, NotEmpty, NotFound, NotPermitted, NotSupported)
from .attrs import MARKER_FILE, ROOT_INO, STATUS_FILE, STATUS_JSON_FILE, Attributes, inode_number
from .content_check import compared_on_rewrite_locked
from .exits import Writers
from .handles import FileHandle, HandleTable, SnapshotHandle
from .markers import MarkerHandle, Markers
from .names import CREATE_MARKER, ROOT_STATUS, STATUS_NAMES, check_file_name, check_session_name
from .open_files import OpenFiles, opens_for_writing
from .renames import Renames
from .rules import (check_not_sealed, check_tree_open_locked, check_tree_removal_locked,
                    check_uploadable_name_locked)
from .status import RenderedStatus
from .tree import DIR, FILE, MARKER, MISSING, ROOT, ROOT_STATUS_FILE, SESSION, STATUS, SessionTree

log = logging.getLogger(__name__)

ROOT_ATTRS_KEY = "root_attrs"
XATTRS = ("user.fs360.state", "user.fs360.received", "user.fs360.error", "user.fs360.server_name")
# A session folder's: the server's upload session, and the project's page once it is ready.
SESSION_XATTRS = ("user.fs360.upload_id", "user.fs360.project_url")


def foreign_xattr_errno(name: str) -> int:
    """The answer for an attribute fs360 does not have: ENODATA for another `user.` name (it
    does not exist); ENOTSUP for any other namespace (no ACLs, SELinux labels or capabilities at
    all), on which `ls -l` stops asking the rest of its listing."""
    return errno.ENODATA if name.startswith("user.") else errno.ENOTSUP


class MountModel:
    """The one object fuse_ops.py and the daemon use: each operation, from path to part."""

    def __init__(self, engine: Engine, settings: Settings, uid: int | None = None, gid: int | None = None):
        self.engine = engine
        self.settings = settings
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.mounted_at_ns = time.time_ns()
        # The mount's root: its mode and owner, changeable (chmod 1777 for a shared mount), kept.
        self.root = {"mode": 0o755, "uid": self.uid, "gid": self.gid, **(engine.journal.get_meta(ROOT_ATTRS_KEY) or {})}
        self._handles = HandleTable()
        self.attrs = Attributes(engine, self.uid, self.gid)
        self.writers = Writers(engine)
        self.markers = Markers(engine, self._handles, self.writers)
        self.status = RenderedStatus(engine, self.markers.pending_note_locked)
        with engine.lock:
            self.tree = SessionTree(engine, settings.local_only_patterns)
        self.files = OpenFiles(engine, self.tree, self.markers, self._handles, self.writers)
        self.renames = Renames(engine, self.tree, self.markers, self.writers)

    # --- attributes ---------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        attrs = self.attributes(path, fh)
        if attrs is None:
            raise NotFound(path if path is not None else "no path and no open file")
        return attrs

    def attributes(self, path: str | None, fh: int | None = None) -> dict | None:
        """getattr's answer, None for a name that is not there: the kernel looks up every name
        before it is created (cp's stat and O_EXCL, twice per file), and an exception through
        mfusepy's layers costs more than the rest of the answer."""
        handle = self._handles.get(fh) if fh is not None else None
        if isinstance(handle, FileHandle):
            with self.engine.lock:
                return self.attrs.file(handle.record)
        if path is None:
            return None
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind == ROOT:
                return self._root_attrs_locked()
            if node.kind == ROOT_STATUS_FILE:
                attrs = self._root_status_attrs_locked()
            elif node.kind == SESSION:
                return self.attrs.session(node.session, self.tree.subfolder_count_locked(node.session, ""))
            elif node.kind == STATUS or (node.kind == MARKER and self.markers.listed(node.session)):
                attrs, = self._virtual_entry_attrs_locked(node.session, (node.name,))
            elif node.kind == FILE:
                return self.attrs.file(node.record)
            elif node.kind == DIR:
                return self.attrs.folder(node.folder, self.tree.subfolder_count_locked(node.session, node.name))
            else:
                return None
        return attrs()  # a status file's size: rendered with the lock released

    def _root_attrs_locked(self) -> dict:
        return self.attrs.dir(ROOT_INO, self.root["mode"], self.mounted_at_ns, 2 + len(self.engine.registry.sessions),
                              self.root["uid"], self.root["gid"])

    def _root_status_attrs_locked(self):
        content, = self.status.prepare_locked(None, (ROOT_STATUS,))
        return lambda: self.attrs.virtual(inode_number(STATUS_FILE, 0), 0o444, size=len(content()))

    def _virtual_entry_attrs_locked(self, session, names: tuple[str, ...]) -> list:
        """Attributes of a session's status files or .create, the same for getattr and a listing
        (the kernel caches both), as callables to call without engine.lock (see RenderedStatus):
        the status files of one call are rendered from one snapshot."""
        mtime_ns = session.mtime_ns
        statuses = tuple(name for name in names if name != CREATE_MARKER)
        contents = dict(zip(statuses, self.status.prepare_locked(session, statuses)))

        def attrs_of(name: str):
            if name == CREATE_MARKER:
                attrs = self.attrs.virtual(inode_number(MARKER_FILE, session.id), self.markers.mode(session),
                                           self.markers.mtime_ns(session), size=len(self.markers.text(session)))
                return lambda: attrs
            content = contents[name]
            ino = inode_number(STATUS_JSON_FILE if name.endswith(".json") else STATUS_FILE, session.id)
            return lambda: self.attrs.virtual(ino, 0o444, mtime_ns, size=len(content()))
        return [attrs_of(name) for name in names]

    def readdir(self, path: str) -> list[tuple[str, dict]]:
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind == ROOT:
                virtual = [(ROOT_STATUS, self._root_status_attrs_locked())]
                entries = [(name, self.attrs.session(s, self.tree.subfolder_count_locked(s, "")))
                           for name, s in self.engine.registry.sessions.items()]
            elif node.kind == SESSION:
                session = node.session
                names = STATUS_NAMES + ((CREATE_MARKER,) if self.markers.listed(session) else ())
                virtual = list(zip(names, self._virtual_entry_attrs_locked(session, names)))
                entries = self._children_locked(session, "")
            elif node.kind == DIR:
                return self._children_locked(node.session, node.name)
            elif node.kind == MISSING:
                raise NotFound(path)
            else:
                raise NotADirectory(path)
        return [(name, attrs()) for name, attrs in virtual] + entries

    def _children_locked(self, session, folder: str) -> list[tuple[str, dict]]:
        files, folders = self.tree.children_locked(session, folder)
        return [(name, self.attrs.file(record)) for name, record in files] \
            + [(name, self.attrs.folder(child, self.tree.subfolder_count_locked(session, f"{folder}/{name}".lstrip("/"))))
               for name, child in folders]

    def statfs(self) -> dict:
        st = self.engine.spool.disk_usage()
        return {"f_bsize": st.f_bsize, "f_frsize": st.f_frsize, "f_blocks": st.f_blocks, "f_bfree": st.f_bfree,
                "f_bavail": st.f_bavail, "f_files": st.f_files, "f_ffree": st.f_ffree, "f_favail": st.f_favail,
                "f_namemax": 255}

    # --- folders -------------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int, uid: int | None = None, gid: int | None = None) -> None:
        """A folder made by `uid`/`gid` (another user on a shared mount) belongs to them."""
        owner = (None if uid == self.uid else uid, None if gid == self.gid else gid)
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind != MISSING:
                raise AlreadyExists(path)
            if node.session is None:
                check_session_name(node.name)
                self.engine.registry.create_session_locked(node.name, mode & 0o7777, *owner)
                return
            self._check_name_locked(node)
            check_not_sealed(node.session)
            check_tree_open_locked(node.session, node.name)
            self.tree.add_folder_locked(node.session, node.name, mode & 0o7777, *owner)
            self.tree.touch_parent_locked(node)

    def rmdir(self, path: str) -> None:
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind == SESSION:
                self.tree.discard_session_locked(node.session, self.markers.listed(node.session))
            elif node.kind == DIR:
                if not self.tree.is_empty_locked(node.session, node.name):
                    raise NotEmpty(f"{node.name} is not empty")
                self._check_tree_removal_locked(node, node.name, "not removed")
                self.tree.remove_folder_locked(node.session, node.name)
                self.tree.touch_parent_locked(node)
            elif node.kind == MISSING:
                raise NotFound(path)
            elif node.kind == ROOT:
                raise NotPermitted("the mount itself")
            else:
                raise NotADirectory(path)

    # --- creating and opening -------------------------------------------------------------------

    def refuse_special(self, path: str, what: str) -> None:
        """symlink, link, mknod: the server takes regular files only. Refused (EPERM), and said in
        the folder's status: `cp -a` of a tree holding a link prints only "Operation not
        permitted", and its failure holds every file it copied."""
        reason = (f"not made: the server takes regular files only, not {what}; copy the folder without "
                  f"them, or with `cp -rL` / `rsync -rL`, which copy what the links point to")
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            # Not said of a scratch name: git init tries a symbolic link in .git, and gets on without.
            if node.session is not None and node.kind not in (SESSION, STATUS, MARKER) \
                    and not self.tree.local_only(node.name):
                self.engine.registry.name_refused_locked(node.session, node.name, reason)
        raise NotPermitted(reason)

    def _check_name_locked(self, node) -> None:
        """A name the mount takes in no session (control characters, past 255 bytes): refused, and
        listed in the folder's status (`cp -a` of a folder holding one says only "Invalid argument",
        exits 1, and every file it copied is held)."""
        try:
            check_file_name(node.basename)
        except Fs360Error as exc:
            self.engine.registry.name_refused_locked(node.session, node.name, f"not made: {exc}")
            raise

    def create(self, path: str, mode: int, flags: int, uid: int | None = None, gid: int | None = None) -> int:
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind in (ROOT, ROOT_STATUS_FILE, SESSION) or node.session is None:
                raise NotPermitted("only folders live at the root")
            session = node.session
            if node.kind == STATUS:
                raise AccessDenied("status files are read-only")
            if node.kind == MARKER:
                return self.markers.open_locked(session, writable=True, truncate=True)
            if node.kind == DIR:
                raise IsADirectory(path)
            self._check_name_locked(node)
            if node.kind == FILE and compared_on_rewrite_locked(self.engine, node.record):
                # A re-copy of a file the server holds (or of a frozen tree's) only compares: fine even once sealed.
                return self.files.open_locked(node.record, flags | os.O_TRUNC)
            local_only = self.tree.local_only(node.name)
            revivable = None if local_only else self.engine.registry.revivable_locked(session, node.name)
            if node.kind == MISSING and revivable is not None:
                # A re-run that deleted it first (tar -x, unzip -o): only compared, so fine in a sealed
                # session or a frozen tree too (it names no new file).
                return self.files.open_revival_locked(revivable, append=bool(flags & os.O_APPEND))
            try:
                check_not_sealed(session)
                check_tree_open_locked(session, node.parent)
            except Fs360Error as exc:
                if not local_only:  # cp -a into a frozen tree says only "Permission denied"
                    self.engine.registry.name_refused_locked(session, node.name, str(exc))
                raise
            if node.kind == FILE:
                # A create racing another: behave like open with O_TRUNC.
                return self.files.open_locked(node.record, flags | os.O_TRUNC)
            if not local_only:
                try:
                    check_uploadable_name_locked(self.engine, session, node.name)
                except Fs360Error as exc:
                    self.engine.registry.name_refused_locked(session, node.name, str(exc))
                    raise
            record = self.engine.registry.create_file_locked(session, node.name, mode & 0o7777,
                                                    self.uid if uid is None else uid,
                                                    self.gid if gid is None else gid, local_only)
            self.tree.touch_parent_locked(node)
            return self.files.open_locked(record, flags | os.O_RDWR)

    def open(self, path: str, flags: int) -> int:
        writing = opens_for_writing(flags)
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind in (STATUS, ROOT_STATUS_FILE):
                if writing:
                    raise AccessDenied("status files are read-only")
                content, = self.status.prepare_locked(node.session, (node.name,), fresh=True)
            elif node.kind == MARKER:
                if not self.markers.listed(node.session) and not writing:
                    raise NotFound(path)
                # Opening an unlisted .create for writing is creating it: the kernel sends an open,
                # not a create, when it still caches the entry of a marker refused a moment ago.
                return self.markers.open_locked(node.session, writable=writing, truncate=bool(flags & os.O_TRUNC))
            elif node.kind == FILE:
                return self.files.open_locked(node.record, flags)
            elif node.kind == MISSING:
                raise NotFound(path)
            else:
                raise IsADirectory(path)
        # An open status file is rendered once (one read sees one state), with the lock released.
        return self._handles.add(SnapshotHandle(content()))

    def is_snapshot(self, fh: int) -> bool:
        return isinstance(self._handles.get(fh), (SnapshotHandle, MarkerHandle))

    def is_status_snapshot(self, fh: int) -> bool:
        """A status file's content as rendered at open: its flush and release settle nothing."""
        return isinstance(self._handles.get(fh), SnapshotHandle)

    # --- open handles: .create or a file ---------------------------------------------------------

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handles.require(fh)
        if isinstance(handle, FileHandle):
            return self.files.read(handle, size, offset)
        return handle.content[offset:offset + size]

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handles.require(fh)
        if isinstance(handle, MarkerHandle):
            return self.markers.write(handle, data, offset)
        if not isinstance(handle, FileHandle):
            raise AccessDenied("not open for writing")
        return self.files.write(handle, data, offset)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        handle = self._handles.get(fh) if fh is not None else None
        if isinstance(handle, MarkerHandle):
            self.markers.truncate(handle, length)
            return
        self.files.truncate(path, length, handle if isinstance(handle, FileHandle) else None)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        self.files.fallocate(self._handles.require(fh), mode, offset, length)

    def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles.require(fh)
        if isinstance(handle, FileHandle):
            self.files.fsync(handle, datasync)

    def flush(self, fh: int, pid: int | None = None) -> None:
        """close() by process `pid`: a written .create is accepted here, so an invalid one fails
        the close; a file closed by a dying writer is remembered as unfinished."""
        handle = self._handles.get(fh)
        if isinstance(handle, MarkerHandle):
            if handle.writable:
                self.markers.flush(handle, self.writers.dying(pid), self.writers.family(pid))
            else:
                self.markers.flush(handle)
        elif isinstance(handle, FileHandle):
            self.files.flush(handle, pid)

    def release(self, fh: int, at_unmount: bool = False) -> None:
        handle = self._handles.pop(fh)
        if isinstance(handle, FileHandle):
            (self.files.release_at_unmount if at_unmount else self.files.release)(handle)
        elif isinstance(handle, MarkerHandle):
            self.markers.release(handle)

    def release_all(self) -> None:
        """The kernel is done with the mount (its DESTROY), or the daemon stops, with handles whose
        release never came: each is settled as its writer left it. One whose writer had closed it
        is finished (a lazy unmount ends the connection right after the last close) and uploads;
        one still being written is unfinished (see OpenFiles.release_at_unmount)."""
        handles = self._handles.numbers()
        if handles:
            log.info("unmounted with %d file(s) whose last release never came", len(handles))
        for fh in handles:
            self.release(fh, at_unmount=True)

    # --- writers that die ------------------------------------------------------------------------

    def finish_writer(self, fh: int, succeeded: bool, reason: str = "") -> None:
        """Closes handle `fh` of a writer that is not a process (a WebDAV PUT), which knows at
        once whether it finished: succeeded, the file is final and queued at once; otherwise it
        is `interrupted` with `reason`, never uploaded as it is."""
        handle = self._handles.get(fh)
        try:
            if isinstance(handle, FileHandle) and handle.writable and handle.check is None:
                if not succeeded:
                    handle.failure = handle.failure or reason or "the writer did not finish it; copy it again"
                handle.closed = True
            elif succeeded:
                self.flush(fh)  # a re-copy is compared, a .create accepted, at the close
            elif isinstance(handle, MarkerHandle):
                handle.broken = True  # a .create cut short is never a request
        finally:
            self.release(fh)

    # --- writers' exits: the commit point --------------------------------------------------------

    def watch_exits(self) -> None:
        """Watches the exits of the processes that write files (see exits.py)."""
        self.writers.start()

    def stop_watching_exits(self) -> None:
        """The mount ends: files whose writers are still exiting get their commit point first
        (at most the write-back delay), then the watch stops."""
        self.engine.settle_commits(self.settings.writeback_delay)
        self.writers.stop()

    def release_held(self, path: str) -> str:
        """`fs360 release PATH`: the user says a held file is whole; returns what was done."""
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind != FILE:
                raise NotFound("no such file in the mount: check the path") if node.kind == MISSING \
                    else InvalidArgument(f"{path} is not a file")
            if not self.engine.registry.release_held_locked(node.record):
                raise InvalidArgument(f"{node.name} is not held (it is {node.record.state}): nothing to release")
            return f"{node.name}: released; it uploads now"

    # --- renaming and removing -----------------------------------------------------------------

    def rename(self, old: str, new: str, pid: int | None = None) -> None:
        """rename(2) by process `pid` (it may commit a scratch file under its final name)."""
        self.renames.rename(old, new, pid)

    def refused_to(self, pid: int, path: str, error: int) -> None:
        """The mount refused task `pid` an operation on `path` (errno `error`): should its program
        then fail, the files it wrote say that refusal came first (exits.Writers.note_refusal)."""
        self.writers.note_refusal(pid, path.lstrip("/"), error)

    def unlink(self, path: str, pid: int | None = None) -> None:
        """`pid`: the task unlinking, when known (status names the program that removed .create)."""
        remover = self.writers.identify(pid) if pid and path.endswith("/" + CREATE_MARKER) else None
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind in (ROOT_STATUS_FILE, STATUS):
                return  # a no-op that succeeds, so rm -r of a session or of the mount works
            if node.kind == MARKER:
                self.markers.unlink_locked(node.session, remover.name if remover else "")
            elif node.kind == FILE:
                if self.tree.unhide_locked(node.session, node.name):
                    return  # libfuse's last release of a file unlinked while open: gone already
                if node.record.in_tree and not compared_on_rewrite_locked(self.engine, node.record):
                    # (A frozen tree's whole file may go: its archive keeps it, and tar -x or
                    # unzip -o creating it again identical brings it back: revivable_locked.)
                    self._check_tree_removal_locked(node, node.parent, "not deleted")
                self.engine.registry.remove_file_locked(node.record)
                self.tree.touch_parent_locked(node)
            elif node.kind == MISSING:
                raise NotFound(path)
            else:
                raise IsADirectory(path)

    def _check_tree_removal_locked(self, node, folder: str, what: str) -> None:
        """rm (-r) in a frozen tree (rules.check_tree_removal_locked): a refusal is listed in status,
        since rm prints only "Permission denied"."""
        try:
            check_tree_removal_locked(node.session, folder)
        except AccessDenied as exc:
            self.engine.registry.name_refused_locked(node.session, node.name, f"{what}: {exc}")
            raise

    # --- metadata -----------------------------------------------------------------------------------

    def chmod(self, path: str, mode: int) -> None:
        self._set_attrs(path, mode=mode & 0o7777)

    def chown(self, path: str, uid: int, gid: int) -> None:
        attrs = {}
        if uid != -1 and uid != 0xFFFFFFFF:
            attrs["uid"] = uid
        if gid != -1 and gid != 0xFFFFFFFF:
            attrs["gid"] = gid
        self._set_attrs(path, **attrs)

    def utimens(self, path: str, mtime_ns: int | None) -> None:
        mtime_ns = time.time_ns() if mtime_ns is None else mtime_ns
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind == MARKER:
                # The time a re-run of the copy compares (rsync's quick check): kept.
                self.markers.set_mtime_locked(node.session, mtime_ns)
                return
        self._set_attrs(path, mtime_ns=mtime_ns)

    def _set_attrs(self, path: str, **attrs) -> None:
        if not attrs:
            return
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            now = time.time_ns()
            if node.kind == SESSION:
                self.engine.registry.set_session_attrs_locked(node.session, **attrs)
            elif node.kind == DIR:
                folder = node.folder
                for key, value in attrs.items():
                    setattr(folder, key, value)
                folder.ctime_ns = now
                self.engine.registry.update_folder_locked(folder.id, **attrs)
            elif node.kind == ROOT:
                self.root.update((key, value) for key, value in attrs.items() if key != "mtime_ns")
                self.engine.journal.set_meta(ROOT_ATTRS_KEY, self.root)
            elif node.kind == FILE:
                self.engine.registry.attrs_given_locked(node.record, ctime_ns=now, **attrs)
            elif node.kind == MISSING:
                raise NotFound(path)
            # Status files have no metadata of their own, nor has .create but its mtime: accepted.

    # --- extended attributes -----------------------------------------------------------------------

    def getxattr(self, path: str, name: str) -> bytes:
        if name not in XATTRS + SESSION_XATTRS:
            if foreign_xattr_errno(name) == errno.ENODATA:
                raise NoAttribute(name)
            raise NotSupported(f"no {name.partition('.')[0]}.* attributes")
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind == SESSION and name in SESSION_XATTRS:
                value = dict(zip(SESSION_XATTRS, self._session_xattrs_locked(node.session))).get(name)
                if not value:
                    raise NoAttribute(name)  # no server session yet, or no ready project
                return value.encode()
            if node.kind != FILE or name not in XATTRS:
                if node.kind == MISSING:
                    raise NotFound(path)
                raise NoAttribute(name)
            record = node.record
            if name == "user.fs360.state":
                return record.state.encode()
            if name == "user.fs360.received":
                return str(record.server_received).encode()
            if name == "user.fs360.server_name":
                if record.local_only or not record.server_name:
                    raise NoAttribute(name)  # never uploaded: it has no server name
                return record.server_name.encode()
            return record.last_error.encode("utf-8", "surrogateescape")

    def listxattr(self, path: str) -> list[str]:
        with self.engine.lock:
            node = self.tree.resolve_locked(path)
            if node.kind == SESSION:
                return [n for n, v in zip(SESSION_XATTRS, self._session_xattrs_locked(node.session)) if v]
            return list(XATTRS) if node.kind == FILE else []

    def _session_xattrs_locked(self, session) -> tuple[str | None, str | None]:
        project = session.project
        url = project_page(self.settings.api_url, project.name) \
            if project is not None and project.name and project.state == P_READY else None
        return session.upload_id, url

    def setxattr(self, path: str, name: str, value: bytes, options: int) -> None:
        raise NotSupported("fs360's attributes are read-only")

    def removexattr(self, path: str, name: str) -> None:
        raise NotSupported("fs360's attributes are read-only")
