"""The mount's path model: every filesystem operation of semantics.md, without FUSE.

The FUSE adapter (`fuse_ops.py`) only translates calls into these methods and
`Fs360Error`s into errnos, so everything here is tested without a mount.
Open files are tracked by handle: a handle holds its record, so it follows the
file through renames.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass, field

from ..config import Settings
from ..engine.engine import Engine
from ..engine.archive_plan import ARCHIVE_EXTENSIONS
from ..engine.records import (P_CREATED, P_READY, P_WAITING, FileRecord, SessionRecord,
                              in_scratch_folder)
from ..engine.spool import RunningDigest
from ..errors import (AccessDenied, AlreadyExists, FileTooBig, InvalidArgument, IsADirectory, NoAttribute, NoSpace,
                      NotADirectory, NotEmpty, NotFound, NotPermitted, NotSupported, QuotaWouldPass)
from . import status as status_files
from .exits import ExitWatcher
from .names import (CREATE_MARKER, ROOT_STATUS, STATUS_NAMES, check_file_name, check_session_name, extension_of,
                    is_local_only)

log = logging.getLogger(__name__)

# .create holds a JSON object of project fields: anything bigger is not one.
MAX_CREATE_BYTES = 64 * 1024
XATTRS = ("user.fs360.state", "user.fs360.received", "user.fs360.error", "user.fs360.server_name")
# Advertised I/O size: cp, stdio and Python size their buffers by it, so their
# writes reach the mount as 1 MiB requests (the kernel's max_write) instead of 128 KiB.
IO_BLOCK_SIZE = 1024 * 1024
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
# libfuse renames a file unlinked while open to this prefix and unlinks it at its last release.
HIDDEN_PREFIX = ".fuse_hidden"
# Status files are rendered at getattr too (for their size); this long a render is reused.
STATUS_SIZE_TTL = 1.0
PF_EXITING = 0x4
# A writer that dies of a signal this soon after closing a file normally closed it from its
# signal handler (GNU dd on SIGINT): that file is not finished either.
DEATH_AFTER_CLOSE_SECONDS = 2.0


def exit_reason(pid: int) -> str:
    """Why process `pid` is ending abnormally ("" when it is not, or it cannot be told).

    Called at the FUSE flush, which the closing task sends synchronously: a task that is
    exiting closes its files after its exit code is set, so /proc shows the signal that
    killed it, or a non-zero exit status, while the close is in flight.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return ""
    # Fields after the command name (which may hold spaces and parentheses); field 3 is index 0.
    fields = text[text.rindex(b")") + 2:].split()
    try:
        flags, exit_code = int(fields[9 - 3]), int(fields[52 - 3])
    except (IndexError, ValueError):
        return ""
    if not flags & PF_EXITING:
        return ""
    return describe_exit(exit_code)


def describe_exit(exit_code: int, signals_only: bool = False) -> str:
    """The reason to give for a file whose writer ended with `exit_code` (wait status form)."""
    if exit_code & 0x7F:
        try:
            name = signal.Signals(exit_code & 0x7F).name
        except ValueError:
            name = f"signal {exit_code & 0x7F}"
        return f"the writer was killed by {name} before it finished; copy it again"
    if exit_code >> 8 and not signals_only:
        return f"the writer exited with status {exit_code >> 8} while writing it; copy it again"
    return ""


@contextlib.contextmanager
def spool_limits():
    """The spool's own limits reach the writer as what they are, not as an internal error."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpace("the spool disk is full") from None
        if exc.errno == errno.EFBIG:
            raise FileTooBig("larger than the spool's disk takes") from None
        raise


@dataclass(eq=False)
class ContentCheck:
    """A file the server holds, opened for writing: what is written is compared, never stored.

    Re-running a copy rewrites every file with the same bytes; that is accepted (the server
    already holds them). The first byte that differs is refused: the server cannot replace it.
    Opened with O_TRUNC (or truncated to 0 later, as GIO does), the new content is compared
    by sha256 at close; before that, writes in place are compared with the spool copy.
    """
    expected_size: int
    expected_sha256: str
    rewriting: bool
    digest: RunningDigest = field(default_factory=RunningDigest)
    size: int = 0
    differs: bool = False

    def __post_init__(self):
        if not self.rewriting:
            self.size = self.expected_size  # untouched so far: the content is the server's

    def restart(self) -> None:
        """Truncated to 0: a rewrite from the first byte begins."""
        self.rewriting, self.size, self.digest = True, 0, RunningDigest()

    def matches(self) -> bool:
        if self.differs or self.size != self.expected_size:
            return False
        return not self.rewriting or self.digest.hexdigest(self.size) == self.expected_sha256


@dataclass(eq=False)
class FileHandle:
    record: FileRecord
    # The spool file (-1 for a check of a server-held file whose spool copy is gone).
    fd: int
    writable: bool
    append: bool
    # A write or truncate through this handle failed: the file is not whole.
    failure: str = ""
    # The process that closed it was dying (killed, or exiting non-zero).
    writer_died: str = ""
    check: ContentCheck | None = None


@dataclass(eq=False)
class MarkerHandle:
    """An open `.create`: written into memory, acted on at close (flush)."""
    session: SessionRecord
    writable: bool
    data: bytearray = field(default_factory=bytearray)
    dirty: bool = False
    # A write failed: the marker is not whole, so close() must not accept it.
    broken: bool = False


@dataclass(eq=False)
class Folder:
    """A folder inside a session, at any depth: a dot-folder (and all below it) is local scratch;
    any other is part of the session's tree, which goes up as one archive at .create."""
    id: int
    mode: int
    mtime_ns: int
    ctime_ns: int = 0


# What a path names, resolved once per operation (the way ratarmount and mountpoint-s3 do it).
ROOT, ROOT_STATUS_FILE, SESSION, STATUS, MARKER, FILE, DIR, MISSING = (
    "root", "root status", "session", "status", "marker", "file", "dir", "missing")


@dataclass(eq=False)
class Node:
    kind: str
    session: SessionRecord | None = None
    # The path inside the session ("a.jpg", "Scans/a.jpg", ".rsync-partial/a.jpg"), or the name at the root.
    name: str = ""
    record: FileRecord | None = None
    folder: Folder | None = None

    @property
    def parent(self) -> str:
        """The folder holding it ("" when it sits in the session itself)."""
        return self.name.rpartition("/")[0]

    @property
    def basename(self) -> str:
        return self.name.rpartition("/")[2]


@dataclass(eq=False)
class SnapshotHandle:
    """An open `status`: rendered once at open, so one read sees one consistent state."""
    content: bytes


class MountModel:
    def __init__(self, engine: Engine, settings: Settings, uid: int | None = None, gid: int | None = None):
        self.engine = engine
        self.settings = settings
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.mounted_at_ns = time.time_ns()
        self._handles: dict[int, FileHandle | MarkerHandle | SnapshotHandle] = {}
        self._next_fh = itertools.count(1)
        self._handles_lock = threading.Lock()
        # Files unlinked while open, under the name libfuse gave them: (session id, name) -> record.
        self._hidden: dict[tuple[int, str], FileRecord] = {}
        # The last file each process closed for writing: pid -> (record, monotonic time of the close).
        self._last_close: dict[int, tuple[FileRecord, float]] = {}
        self._last_close_lock = threading.Lock()
        self._exit_watcher: ExitWatcher | None = None
        # Rendered status files by (session name or "", file name): (monotonic time, content).
        self._status_cache: dict[tuple[str, str], tuple[float, bytes]] = {}
        # Sessions with a .create being written but not yet accepted: it must be listed meanwhile.
        self._markers_open: dict[int, int] = {}
        # Folders: session id -> path inside the session -> folder.
        self._folders: dict[int, dict[str, Folder]] = {}
        with engine.lock:
            self._load_folders_locked()

    def _load_folders_locked(self) -> None:
        sessions = {s.id for s in self.engine.sessions.values()}
        for row in self.engine.folder_rows_locked():
            if row["session_id"] not in sessions:
                self.engine.remove_folder_locked(row["id"])  # its session was discarded
                continue
            self._folders.setdefault(row["session_id"], {})[row["path"]] = Folder(
                row["id"], row["mode"], row["mtime_ns"], row["mtime_ns"])

    # --- path resolution --------------------------------------------------------------------

    @staticmethod
    def _split(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def _session(self, name: str) -> SessionRecord:
        session = self.engine.sessions.get(name)
        if session is None:
            raise NotFound(f"no session {name!r}")
        return session

    def _file(self, session: SessionRecord, name: str) -> FileRecord:
        record = self._lookup_file(session, name)
        if record is None:
            raise NotFound(f"no file {name!r}")
        return record

    def _lookup_file(self, session: SessionRecord, name: str) -> FileRecord | None:
        """A listed file, or one unlinked while open under the name libfuse hid it by."""
        return session.files.get(name) or self._hidden.get((session.id, name))

    def _resolve_locked(self, path: str) -> Node:
        """The one place a path is parsed. Raises NotFound when a folder on the way is missing,
        NotADirectory when a file is on the way."""
        parts = self._split(path)
        if not parts:
            return Node(ROOT)
        if len(parts) == 1:
            if parts[0] == ROOT_STATUS:
                return Node(ROOT_STATUS_FILE, name=ROOT_STATUS)
            session = self.engine.sessions.get(parts[0])
            return Node(SESSION if session else MISSING, session, parts[0])
        session = self._session(parts[0])
        name = "/".join(parts[1:])
        node = Node(MISSING, session, name)
        folders = self._folders.get(session.id, {})
        if node.parent and node.parent not in folders:
            if node.parent in session.files or node.parent.partition("/")[0] in STATUS_NAMES:
                raise NotADirectory(path)
            raise NotFound(path)
        if not node.parent and name in STATUS_NAMES:
            node.kind = STATUS
        elif not node.parent and name == CREATE_MARKER:
            node.kind = MARKER
        elif (record := self._lookup_file(session, name)) is not None:
            node.kind, node.record = FILE, record
        elif name in folders:
            node.kind, node.folder = DIR, folders[name]
        return node

    def _children_locked(self, session: SessionRecord, folder: str) -> list[tuple[str, dict]]:
        """The files and folders directly in `folder` ("" = the session itself)."""
        prefix = folder + "/" if folder else ""
        entries = [(name[len(prefix):], self._file_attrs(record)) for name, record in session.files.items()
                   if name.startswith(prefix) and "/" not in name[len(prefix):]]
        entries += [(path[len(prefix):], self._folder_attrs(folder))
                    for path, folder in self._folders.get(session.id, {}).items()
                    if path.startswith(prefix) and "/" not in path[len(prefix):]]
        return entries

    def _local_only(self, name: str) -> bool:
        """Anything in a dot-folder, and scratch names (dot-files, *.part, ...) in any folder."""
        folder, _, basename = name.rpartition("/")
        if folder and (in_scratch_folder(folder) or basename == CREATE_MARKER):
            return True  # .create means something at the session's top level only
        return is_local_only(basename, self.settings.local_only_patterns)

    @staticmethod
    def _check_tree_open_locked(session: SessionRecord, folder: str) -> None:
        """Refuses a change in `folder` (a path inside the session, "" for its top level) when it
        is part of the tree and .create was accepted: the tree is planned as one archive then."""
        if not folder or in_scratch_folder(folder) or not session.tree_frozen:
            return
        if session.archive is not None:
            raise AccessDenied(f"the tree goes up as {session.archive.server_name}, planned when .create was "
                               f"accepted: it cannot change now")
        raise AccessDenied("the project is requested: the tree can change only before .create")

    def _listed_locked(self, record: FileRecord) -> bool:
        """Whether the record still has a name in its folder (not unlinked, not discarded)."""
        try:
            session = self.engine.session_of(record)
        except KeyError:
            return False
        return session.files.get(record.name) is record

    def _marker_listed(self, session: SessionRecord) -> bool:
        project = session.project
        return (project is not None and not project.marker_hidden) \
            or self._markers_open.get(session.id, 0) > 0

    # --- attributes ---------------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        handle = self._handles.get(fh) if fh is not None else None
        if isinstance(handle, FileHandle):
            with self.engine.lock:
                return self._file_attrs(handle.record)
        if path is None:
            raise NotFound("no path and no open file")
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind == ROOT:
                return self._dir_attrs(0o755, self.mounted_at_ns, nlink=2 + len(self.engine.sessions))
            if node.kind == ROOT_STATUS_FILE:
                return self._virtual_attrs(0o444, size=len(self._status_locked(None, ROOT_STATUS)))
            if node.kind == SESSION:
                return self._session_attrs(node.session)
            if node.kind == STATUS or (node.kind == MARKER and self._marker_listed(node.session)):
                return self._virtual_entry_attrs_locked(node.session, node.name)
            if node.kind == FILE:
                return self._file_attrs(node.record)
            if node.kind == DIR:
                return self._folder_attrs(node.folder)
            raise NotFound(path)

    def _virtual_entry_attrs_locked(self, session, name: str) -> dict:
        """Attributes of a session's status file or .create, the same for getattr and
        a listing (the kernel caches both). Needs engine.lock held."""
        if name == CREATE_MARKER:
            mode = 0o444 if session.sealed else 0o644
            return self._virtual_attrs(mode, session.mtime_ns, size=len(self._marker_text(session)))
        return self._virtual_attrs(0o444, session.mtime_ns, size=len(self._status_locked(session, name)))

    def _status_locked(self, session: SessionRecord | None, name: str, fresh: bool = False) -> bytes:
        """The content of a status file (`session` None: the root one). A render younger than
        STATUS_SIZE_TTL is reused for getattr and listings, so their size is the real one and
        `ls -l` of many sessions does not render each of them again; an open always renders."""
        key = (session.name if session is not None else "", name)
        now = time.monotonic()
        cached = self._status_cache.get(key)
        if not fresh and cached is not None and now - cached[0] < STATUS_SIZE_TTL:
            return cached[1]
        if session is None:
            snaps = [status_files.snapshot_session(s, self.engine) for s in self.engine.sessions.values()]
            content = status_files.render_root(snaps)
        else:
            snapshot = status_files.snapshot_session(session, self.engine)
            render = status_files.render_json if name == "status.json" else status_files.render_text
            content = render(snapshot)
        if len(self._status_cache) > 4 * len(self.engine.sessions) + 8:
            self._status_cache.clear()  # sessions were renamed or removed: drop the old keys
        self._status_cache[key] = (now, content)
        return content

    def _session_attrs(self, session: SessionRecord) -> dict:
        attrs = self._dir_attrs(session.mode, session.mtime_ns)
        attrs["st_ctime"] = max(session.ctime_ns, session.mtime_ns)
        return attrs

    def _folder_attrs(self, folder: Folder) -> dict:
        attrs = self._dir_attrs(folder.mode, folder.mtime_ns)
        attrs["st_ctime"] = max(folder.ctime_ns, folder.mtime_ns)
        return attrs

    def _dir_attrs(self, mode: int, mtime_ns: int, nlink: int = 2) -> dict:
        return {"st_mode": stat.S_IFDIR | (mode & 0o7777), "st_nlink": nlink, "st_uid": self.uid,
                "st_gid": self.gid, "st_size": 4096, "st_mtime": mtime_ns, "st_ctime": mtime_ns,
                "st_atime": mtime_ns}

    def _virtual_attrs(self, mode: int, mtime_ns: int | None = None, size: int = 0) -> dict:
        now = mtime_ns or time.time_ns()
        # Status files are served with direct_io (read to EOF), but copy tools trust the size.
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_uid": self.uid, "st_gid": self.gid,
                "st_size": size, "st_mtime": now, "st_ctime": now, "st_atime": now}

    def _file_attrs(self, record: FileRecord) -> dict:
        """Needs engine.lock held. A file unlinked while open has no link left (nlink 0)."""
        return {"st_mode": stat.S_IFREG | (record.mode & 0o7777), "st_nlink": 1 if self._listed_locked(record) else 0,
                "st_uid": record.uid, "st_gid": record.gid, "st_size": record.size,
                "st_blocks": (record.size + 511) // 512, "st_blksize": IO_BLOCK_SIZE,
                "st_mtime": record.mtime_ns, "st_ctime": max(record.ctime_ns, record.mtime_ns),
                "st_atime": record.mtime_ns}

    def readdir(self, path: str) -> list[tuple[str, dict]]:
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind == ROOT:
                entries = [(ROOT_STATUS, self._virtual_attrs(0o444, size=len(self._status_locked(None, ROOT_STATUS))))]
                entries += [(name, self._session_attrs(s)) for name, s in self.engine.sessions.items()]
                return entries
            if node.kind == SESSION:
                session = node.session
                names = list(STATUS_NAMES) + ([CREATE_MARKER] if self._marker_listed(session) else [])
                entries = [(name, self._virtual_entry_attrs_locked(session, name)) for name in names]
                return entries + self._children_locked(session, "")
            if node.kind == DIR:
                return self._children_locked(node.session, node.name)
            if node.kind == MISSING:
                raise NotFound(path)
            raise NotADirectory(path)

    def statfs(self) -> dict:
        st = self.engine.spool.disk_usage()
        return {"f_bsize": st.f_bsize, "f_frsize": st.f_frsize, "f_blocks": st.f_blocks, "f_bfree": st.f_bfree,
                "f_bavail": st.f_bavail, "f_files": st.f_files, "f_ffree": st.f_ffree, "f_favail": st.f_favail,
                "f_namemax": 255}

    # --- folders -------------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> None:
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind != MISSING:
                raise AlreadyExists(path)
            if node.session is None:
                check_session_name(node.name)
                self.engine.create_session_locked(node.name, mode & 0o7777)
                return
            check_file_name(node.basename)
            if node.session.sealed:
                raise AccessDenied("the project is created: the session is sealed")
            self._check_tree_open_locked(node.session, node.name)
            now = time.time_ns()
            dir_id = self.engine.add_folder_locked(node.session, node.name, mode & 0o7777, now)
            self._folders.setdefault(node.session.id, {})[node.name] = Folder(dir_id, mode & 0o7777, now, now)
            self._touch_parent_locked(node)

    def rmdir(self, path: str) -> None:
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind == SESSION:
                self._discard_session_locked(node.session)
            elif node.kind == DIR:
                if self._children_locked(node.session, node.name):
                    raise NotEmpty(f"{node.name} is not empty")
                self._check_tree_open_locked(node.session, node.name)
                self.engine.remove_folder_locked(node.folder.id)
                del self._folders[node.session.id][node.name]
                self._touch_parent_locked(node)
            elif node.kind == MISSING:
                raise NotFound(path)
            elif node.kind == ROOT:
                raise NotPermitted("the mount itself")
            else:
                raise NotADirectory(path)

    def _discard_session_locked(self, session: SessionRecord) -> None:
        if session.files or self._marker_listed(session) or self._folders.get(session.id):
            raise NotEmpty(f"{session.name} still lists files")
        # Files unlinked while open do not hold the folder (POSIX): their handles keep
        # working on the spool file they opened, and their last close finds no record.
        self.engine.discard_session_locked(session)
        for key in [key for key in self._hidden if key[0] == session.id]:
            del self._hidden[key]
        self._folders.pop(session.id, None)
        self.engine.remove_folders_of_locked(session)

    # --- creating and opening -------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int, uid: int | None = None, gid: int | None = None) -> int:
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind in (ROOT, ROOT_STATUS_FILE, SESSION) or node.session is None:
                raise NotPermitted("only folders live at the root")
            session = node.session
            if node.kind == STATUS:
                raise AccessDenied("status files are read-only")
            if node.kind == MARKER:
                return self._open_marker_locked(session, writable=True, truncate=True)
            if node.kind == DIR:
                raise IsADirectory(path)
            check_file_name(node.basename)
            if session.sealed:
                raise AccessDenied("the project is created: the session is sealed")
            self._check_tree_open_locked(session, node.parent)
            if node.kind == FILE:
                # A create racing another: behave like open with O_TRUNC.
                return self._open_file_locked(node.record, flags | os.O_TRUNC)
            local_only = self._local_only(node.name)
            if not local_only:
                self._check_uploadable_name_locked(session, node.name)
            record = self.engine.create_file_locked(session, node.name, mode & 0o7777,
                                                    self.uid if uid is None else uid,
                                                    self.gid if gid is None else gid, local_only)
            self._touch_parent_locked(node)
            return self._open_file_locked(record, flags | os.O_RDWR)

    def _touch_parent_locked(self, *nodes: Node) -> None:
        """A name came or went: its folder's mtime and ctime change (POSIX)."""
        now = time.time_ns()
        for node in nodes:
            if node.parent:
                folder = self._folders[node.session.id][node.parent]
                folder.mtime_ns = folder.ctime_ns = now
                self.engine.update_folder_locked(folder.id, mtime_ns=now)
            else:
                self.engine.set_session_attrs_locked(node.session, mtime_ns=now)
                node.session.ctime_ns = now

    def _check_uploadable_name_locked(self, session: SessionRecord, name: str) -> None:
        if any(f.name == name for f in session.unlinked):
            raise AccessDenied(f"the server holds a deleted file named {name!r}: the name cannot be used again")
        ext = extension_of(name)
        if session.archive is not None and "/" not in name and ext in ARCHIVE_EXTENSIONS:
            raise NotPermitted(f"this folder's tree goes up as {session.archive.server_name}; "
                               f"the server takes one archive per session")
        caps = self.engine.caps
        if ext in caps.refused_extensions or (caps.allowed_extensions and ext not in caps.allowed_extensions):
            raise NotPermitted(f"the server refuses the extension {ext!r}")

    def open(self, path: str, flags: int) -> int:
        writing = bool(flags & WRITE_FLAGS) or bool(flags & os.O_TRUNC)
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind in (STATUS, ROOT_STATUS_FILE):
                if writing:
                    raise AccessDenied("status files are read-only")
                return self._new_handle(SnapshotHandle(self._status_locked(node.session, node.name, fresh=True)))
            if node.kind == MARKER:
                if not self._marker_listed(node.session) and not writing:
                    raise NotFound(path)
                # Opening an unlisted .create for writing is creating it: the kernel sends an open,
                # not a create, when it still caches the entry of a marker refused a moment ago.
                return self._open_marker_locked(node.session, writable=writing,
                                                truncate=bool(flags & os.O_TRUNC))
            if node.kind == FILE:
                return self._open_file_locked(node.record, flags)
            if node.kind == MISSING:
                raise NotFound(path)
            raise IsADirectory(path)

    def _open_file_locked(self, record: FileRecord, flags: int) -> int:
        writing = bool(flags & WRITE_FLAGS) or bool(flags & os.O_TRUNC)
        truncate = bool(flags & os.O_TRUNC)
        if writing and self._held_with_known_content(record):
            return self._open_check_locked(record, truncate, bool(flags & os.O_APPEND))
        if writing:
            self._check_mutable_locked(record)
        elif record.evicted or not self.engine.spool.exists(record.id):
            raise AccessDenied("only the server holds this file's data now")
        try:
            fd = os.open(self.engine.spool.path(record.id), os.O_RDWR if writing else os.O_RDONLY)
        except FileNotFoundError:
            raise AccessDenied("only the server holds this file's data now") from None
        if writing:
            if truncate and record.size:
                os.ftruncate(fd, 0)
            self.engine.open_for_write_locked(record, rewrite=truncate or record.size == 0, truncated=truncate)
        return self._new_handle(FileHandle(record, fd, writing, bool(flags & os.O_APPEND)))

    @staticmethod
    def _held_with_known_content(record: FileRecord) -> bool:
        """The server may hold it and the journal knows its sha256: a rewrite can be compared."""
        return not record.local_only and record.may_be_on_server and bool(record.sha256)

    def _open_check_locked(self, record: FileRecord, truncate: bool, append: bool) -> int:
        """A file the server holds, opened for writing: the handle only compares what is written
        (against the spool copy while it exists, and by sha256 at close)."""
        fd = -1
        if not record.evicted:
            try:
                fd = os.open(self.engine.spool.path(record.id), os.O_RDONLY)
            except FileNotFoundError:
                pass
        check = ContentCheck(record.size, record.sha256, rewriting=truncate)
        return self._new_handle(FileHandle(record, fd, writable=True, append=append, check=check))

    def _check_mutable_locked(self, record: FileRecord) -> None:
        if record.local_only:
            return
        session = self.engine.session_of(record)
        if session.sealed:
            raise AccessDenied("the project is created: the session is sealed")
        if record.in_tree:
            self._check_tree_open_locked(session, record.name.rpartition("/")[0])
        if record.may_be_on_server:
            raise AccessDenied(f"the server holds bytes of {record.name!r}: it cannot be changed")

    def _new_handle(self, handle) -> int:
        with self._handles_lock:
            fh = next(self._next_fh)
            self._handles[fh] = handle
        return fh

    def is_snapshot(self, fh: int) -> bool:
        return isinstance(self._handles.get(fh), (SnapshotHandle, MarkerHandle))

    def _handle(self, fh: int):
        handle = self._handles.get(fh)
        if handle is None:
            raise InvalidArgument(f"unknown file handle {fh}")
        return handle

    # --- reading and writing --------------------------------------------------------------------

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        if isinstance(handle, FileHandle):
            if handle.fd < 0:
                raise AccessDenied("only the server holds this file's data now")
            return os.pread(handle.fd, size, offset)
        content = handle.content if isinstance(handle, SnapshotHandle) else bytes(handle.data)
        return content[offset:offset + size]

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if isinstance(handle, MarkerHandle):
            if not handle.writable:
                raise AccessDenied(".create is read-only")
            end = offset + len(data)
            if end > MAX_CREATE_BYTES:
                handle.broken = True
                raise FileTooBig(f".create holds a JSON object of at most {MAX_CREATE_BYTES} bytes")
            if len(handle.data) < end:
                handle.data.extend(b"\0" * (end - len(handle.data)))
            handle.data[offset:end] = data
            handle.dirty = True
            return len(data)
        if not isinstance(handle, FileHandle) or not handle.writable:
            raise AccessDenied("not open for writing")
        if handle.check is not None:
            return self._write_compared(handle, data, offset)
        record = handle.record
        if handle.append:
            offset = record.size
        with self._failures_marked(handle):
            end = offset + len(data)
            if end > record.size:
                self._check_growth(record, end)
            written = self._pwrite(handle.fd, data, offset)
        with self.engine.lock:
            self.engine.wrote_locked(record, offset, data[:written])
        return written

    @contextlib.contextmanager
    def _failures_marked(self, handle: FileHandle):
        """A write, truncate or fallocate that fails leaves the file short of what the writer
        meant: its handle is marked, and its close makes the file `interrupted`."""
        try:
            yield
        except (NoSpace, FileTooBig, QuotaWouldPass, OSError) as exc:
            code = getattr(exc, "errno", None) or errno.EIO
            handle.failure = (f"a write failed ({errno.errorcode.get(code, code)}: "
                              f"{getattr(exc, 'strerror', None) or exc}); copy it again")
            raise

    def _write_compared(self, handle: FileHandle, data: bytes, offset: int) -> int:
        check = handle.check
        if handle.append:
            offset = check.size
        if not check.differs:
            end = offset + len(data)
            same = end <= check.expected_size
            if same and handle.fd >= 0:
                same = os.pread(handle.fd, len(data), offset) == data
            if check.rewriting:
                check.digest.add(offset, data)
                check.size = max(check.size, end)
            # Without the spool copy only a front-to-back rewrite can be compared (by sha256).
            check.differs = not same or (handle.fd < 0 and not (check.rewriting and check.digest.valid))
        if check.differs:
            self._refuse_change(handle)
        return len(data)

    def _refuse_change(self, handle: FileHandle) -> None:
        """The rewrite of a file the server holds differs: refused, with the reason kept."""
        handle.check.differs = True
        with self.engine.lock:
            raise AccessDenied(self.engine.refuse_change_locked(handle.record))

    def _check_growth(self, record: FileRecord, new_size: int) -> None:
        if record.local_only:
            return
        caps = self.engine.caps
        if caps.file_cap and new_size > caps.file_cap:
            raise FileTooBig(f"the server takes files up to {caps.file_cap} bytes")
        if caps.session_cap:
            with self.engine.lock:
                session = self.engine.session_of(record)
                total = sum(f.size for f in session.files.values() if not f.local_only and f is not record)
            if total + new_size > caps.session_cap:
                raise QuotaWouldPass(f"the session would pass the server's cap of {caps.session_cap} bytes")

    def _pwrite(self, fd: int, data: bytes, offset: int) -> int:
        try:
            with spool_limits():
                return os.pwrite(fd, data, offset)
        except NoSpace:
            # The disk is full: drop uploaded data we still keep, then try once more.
            if self.engine.evict_if_needed() <= 0:
                raise
        with spool_limits():
            return os.pwrite(fd, data, offset)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        handle = self._handles.get(fh) if fh is not None else None
        if isinstance(handle, MarkerHandle):
            del handle.data[length:]
            handle.dirty = True
            return
        if isinstance(handle, FileHandle) and handle.check is not None:
            if length == 0:
                handle.check.restart()
            elif length != handle.check.size:
                self._refuse_change(handle)
            return
        with self.engine.lock:
            if isinstance(handle, FileHandle):
                record = handle.record
            else:
                record = self._file_to_truncate_locked(path)
                if record is None:
                    return
            if length == record.size:
                return
            self._check_mutable_locked(record)
        if isinstance(handle, FileHandle):
            # Through the handle: it works on a file unlinked while open too (its spool file is gone).
            with self._failures_marked(handle):
                self._truncate_spool(record, length, lambda: os.ftruncate(handle.fd, length))
        else:
            self._truncate_spool(record, length, lambda: os.truncate(self.engine.spool.path(record.id), length))
        with self.engine.lock:
            self.engine.truncated_locked(record, length, listed=self._listed_locked(record))

    def _file_to_truncate_locked(self, path: str) -> FileRecord | None:
        """The record a truncate by path changes (None: nothing to do)."""
        node = self._resolve_locked(path)
        if node.kind in (STATUS, ROOT_STATUS_FILE):
            raise AccessDenied("status files are read-only")
        if node.kind == MARKER:
            # `> .create` truncates by path before opening: the open handle does the work.
            if node.session.sealed:
                raise AccessDenied(".create is read-only once the project exists")
            return None
        if node.kind == FILE:
            return node.record
        if node.kind == MISSING:
            raise NotFound(path)
        raise IsADirectory(path)

    def _truncate_spool(self, record: FileRecord, length: int, truncate) -> None:
        if length > record.size:
            self._check_growth(record, length)
        with spool_limits():
            truncate()

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        handle = self._handle(fh)
        if not isinstance(handle, FileHandle) or not handle.writable or handle.check is not None:
            raise AccessDenied("not open for writing")
        if mode != 0:
            raise NotSupported("only plain fallocate is supported")
        end = offset + length
        with self._failures_marked(handle):
            if end > handle.record.size:
                self._check_growth(handle.record, end)
            with spool_limits():
                os.posix_fallocate(handle.fd, offset, length)
        with self.engine.lock:
            self.engine.allocated_locked(handle.record, end)

    def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handle(fh)
        if isinstance(handle, FileHandle) and handle.fd >= 0:
            (os.fdatasync if datasync else os.fsync)(handle.fd)

    def flush(self, fh: int, pid: int | None = None) -> None:
        """close() by process `pid`: a written .create is accepted here, so an invalid one fails
        the close; a file closed by a dying writer is remembered as unfinished."""
        handle = self._handles.get(fh)
        if isinstance(handle, MarkerHandle):
            self._flush_marker(handle)
        elif isinstance(handle, FileHandle) and handle.writable:
            reason = exit_reason(pid) if pid else ""
            if reason:
                handle.writer_died = handle.writer_died or reason
                self.opened_for_writing(pid)  # its death is explained by this file
            elif pid and handle.check is None and self._exit_watcher is not None:
                with self._last_close_lock:
                    self._last_close[pid] = (handle.record, time.monotonic())
            if handle.check is not None and not handle.writer_died and not handle.check.matches():
                self._refuse_change(handle)

    def _flush_marker(self, handle: MarkerHandle) -> None:
        try:
            if handle.broken:
                raise InvalidArgument(".create was not written whole: not accepted")
            if handle.dirty:
                self._accept_marker(handle)
        except InvalidArgument as exc:
            with self.engine.lock:
                handle.session.marker_refused = str(exc)
            raise

    def release(self, fh: int) -> None:
        with self._handles_lock:
            handle = self._handles.pop(fh, None)
        if isinstance(handle, FileHandle):
            try:
                if handle.fd >= 0:
                    os.close(handle.fd)
            finally:
                if handle.check is not None:
                    self._release_check(handle)
                elif handle.writable:
                    self._release_writer(handle)
        elif isinstance(handle, MarkerHandle) and handle.writable:
            with self.engine.lock:
                count = self._markers_open.get(handle.session.id, 1) - 1
                if count > 0:
                    self._markers_open[handle.session.id] = count
                else:
                    self._markers_open.pop(handle.session.id, None)

    def _release_writer(self, handle: FileHandle) -> None:
        record = handle.record
        unfinished = handle.failure or handle.writer_died
        if not unfinished and record.open_writers == 1 and not record.local_only:
            # The last writer: a file not written front to back is hashed here, without the lock.
            self.engine.content_sha256(record)
        with self.engine.lock:
            self.engine.close_writer_locked(record, record.size, unfinished)

    def _release_check(self, handle: FileHandle) -> None:
        """The end of a rewrite of a file the server holds: identical, it takes the new mtime."""
        if handle.check.rewriting and handle.check.matches() and not handle.writer_died:
            with self.engine.lock:
                if self._listed_locked(handle.record):
                    self.engine.keep_identical_locked(handle.record, mtime_ns=time.time_ns())

    def watch_exits(self) -> None:
        """Watches process deaths (when the system lets us), for writers that close a file
        from their signal handler and then die of that signal."""
        watcher = ExitWatcher(self._process_exited)
        if watcher.start():
            self._exit_watcher = watcher

    def stop_watching_exits(self) -> None:
        if self._exit_watcher is not None:
            self._exit_watcher.stop()
            self._exit_watcher = None

    def opened_for_writing(self, pid: int) -> None:
        """Process `pid` went on to write another file (or died holding one): the file it
        closed before was finished, whatever becomes of the process."""
        with self._last_close_lock:
            self._last_close.pop(pid, None)

    def _process_exited(self, pid: int, tgid: int, exit_code: int) -> None:
        with self._last_close_lock:
            closed = self._last_close.pop(pid, None) or self._last_close.pop(tgid, None)
        if closed is None:
            return
        record, closed_at = closed
        reason = describe_exit(exit_code, signals_only=True)
        if reason and time.monotonic() - closed_at < DEATH_AFTER_CLOSE_SECONDS:
            with self.engine.lock:
                self.engine.mark_unfinished_locked(record, reason)

    def release_all(self) -> None:
        """The kernel is done with the mount (its DESTROY): every file was closed, even those
        whose last release never reached us (a lazy unmount ends the connection right after
        the last close). Settles each as closed, so a finished copy is uploaded."""
        with self._handles_lock:
            handles = list(self._handles)
        if handles:
            log.info("unmounted with %d file(s) whose last release never came: settled as closed", len(handles))
        for fh in handles:
            self.release(fh)

    # --- .create -------------------------------------------------------------------------------

    def _open_marker_locked(self, session: SessionRecord, writable: bool, truncate: bool) -> int:
        project = session.project
        if writable and (session.sealed or (project is not None and project.state in (P_CREATED, P_READY))):
            raise AccessDenied("the project is created: .create is read-only")
        handle = MarkerHandle(session, writable)
        if not truncate:
            handle.data.extend(self._marker_text(session))
        if writable:
            self._markers_open[session.id] = self._markers_open.get(session.id, 0) + 1
            if truncate:
                handle.dirty = True  # an empty .create is a valid request too
        return self._new_handle(handle)

    @staticmethod
    def _marker_text(session: SessionRecord) -> bytes:
        project = session.project
        if project is None:
            return b""
        return (json.dumps(project.options) + "\n").encode() if project.options else b""

    def _accept_marker(self, handle: MarkerHandle) -> None:
        text = bytes(handle.data).strip(b"\0 \t\r\n")
        if text:
            try:
                options = json.loads(text.decode("utf-8"))
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"invalid JSON at line {exc.lineno} column {exc.colno}") from None
            except UnicodeDecodeError:
                raise InvalidArgument(".create is not UTF-8 text") from None
            except (ValueError, RecursionError):
                raise InvalidArgument("invalid JSON: nested too deep") from None
            if not isinstance(options, dict):
                raise InvalidArgument(".create must be empty or a JSON object")
        else:
            options = {}
        options.pop("upload_id", None)  # the mount names the session itself
        if "privacy_mode" in options and options["privacy_mode"] not in (0, 1, 2):
            raise InvalidArgument("privacy_mode must be 0, 1 or 2")
        with self.engine.lock:
            session = handle.session
            if self.engine.sessions.get(session.name) is not session:
                raise NotFound("the session was removed")
            project = session.project
            if session.sealed or (project is not None and project.state in (P_CREATED, P_READY)):
                raise AccessDenied("the project is created already")
            self.engine.request_project_locked(session, options)
            session.marker_refused = ""
            handle.dirty = False

    # --- renaming and removing -----------------------------------------------------------------

    def rename(self, old: str, new: str) -> None:
        with self.engine.lock:
            src, dst = self._resolve_locked(old), self._resolve_locked(new)
            if src.kind in (ROOT_STATUS_FILE, STATUS, MARKER) and dst.basename.startswith(HIDDEN_PREFIX) \
                    and dst.session is src.session:
                # libfuse hides an open file it is asked to unlink: for these, the unlink is now.
                if src.kind == MARKER:
                    self._unlink_marker_locked(src.session)
                return
            if src.kind == SESSION:
                self._rename_session_locked(src, dst)
            elif src.kind == DIR:
                self._rename_folder_locked(src, dst)
            elif src.kind == FILE:
                self._rename_file_locked(src, dst)
            elif src.kind == MISSING:
                raise NotFound(old)
            else:
                raise NotPermitted(f"{src.name or 'the mount'} cannot be renamed")

    def _rename_file_locked(self, src: Node, dst: Node) -> None:
        record, session = src.record, src.session
        if dst.session is None or dst.kind in (ROOT, ROOT_STATUS_FILE, SESSION):
            raise NotPermitted("files live inside session folders only")
        if dst.kind in (STATUS, MARKER):
            raise NotPermitted(f"{dst.name} is reserved")
        if dst.kind == DIR:
            raise IsADirectory(dst.name)
        target, name = dst.session, dst.name
        check_file_name(dst.basename)
        if record is target.files.get(name):
            return
        if target is session and dst.basename.startswith(HIDDEN_PREFIX):
            self._hide_locked(src, dst)
            return
        replaced = target.files.get(name)
        if replaced is not None and record.local_only and self._held_with_known_content(replaced):
            self._replace_held_locked(src, dst)
            return
        if not record.local_only or session is not target:
            self._check_mutable_locked(record)
        if target.sealed:
            raise AccessDenied("the project is created: the session is sealed")
        self._check_tree_open_locked(target, dst.parent)
        if replaced is not None:
            # An open writer of the replaced file keeps its handle, on a record no longer listed.
            self._check_mutable_locked(replaced)
        local_only = self._local_only(name)
        if not local_only:
            self._check_uploadable_name_locked(target, name)
        self.engine.rename_file_locked(record, target, name, local_only)
        record.ctime_ns = time.time_ns()
        self._touch_parent_locked(src, dst)

    def _rename_folder_locked(self, src: Node, dst: Node) -> None:
        """A folder moves, with everything in it, within its session."""
        session = src.session
        if dst.session is not session:
            raise NotPermitted("folders stay in their session")
        if dst.kind == DIR and dst.name != src.name:
            if self._children_locked(session, dst.name):
                raise NotEmpty(dst.name)
            self.engine.remove_folder_locked(dst.folder.id)
            del self._folders[session.id][dst.name]
        elif dst.kind != MISSING:
            raise NotADirectory(dst.name) if dst.kind == FILE else NotPermitted(f"{dst.name} is reserved")
        if (dst.name + "/").startswith(src.name + "/"):
            raise InvalidArgument("a folder cannot move into itself")
        check_file_name(dst.basename)
        self._check_tree_open_locked(session, src.name)
        self._check_tree_open_locked(session, dst.name)
        prefix = src.name + "/"
        folders = self._folders[session.id]
        for path in [p for p in folders if p == src.name or p.startswith(prefix)]:
            moved = dst.name + path[len(src.name):]
            folders[moved] = folders.pop(path)
            self.engine.update_folder_locked(folders[moved].id, path=moved)
        for name, record in [(n, r) for n, r in session.files.items() if n.startswith(prefix)]:
            moved = dst.name + name[len(src.name):]
            # Between a dot-folder and the tree, its files change between local scratch and tree files.
            self.engine.rename_file_locked(record, session, moved, self._local_only(moved))
        self._touch_parent_locked(src, dst)

    def _hide_locked(self, src: Node, dst: Node) -> None:
        """libfuse renames a file unlinked while open to `.fuse_hidden…` and unlinks that name at
        the last release: for fs360 the unlink happens now (the server-held or not rules of
        `unlink`), and the open handles keep working on their spool file, reachable by that name."""
        self.engine.remove_file_locked(src.record)
        src.record.ctime_ns = time.time_ns()
        self._hidden[(src.session.id, dst.name)] = src.record
        self._touch_parent_locked(src)

    def _replace_held_locked(self, src: Node, dst: Node) -> None:
        """A local scratch file (rsync's `.name.XXXXXX`) renamed onto a name the server holds:
        a re-run of the same copy is accepted (the copy is dropped), anything else refused."""
        copy, held = src.record, dst.record
        # The copy may still be open: GIO renames its `.goutputstream-*` before closing it.
        if copy.unfinished or copy.size != held.size or self.engine.content_sha256(copy) != held.sha256:
            raise AccessDenied(self.engine.refuse_change_locked(held))
        self.engine.keep_identical_locked(held, copy=copy)
        self._touch_parent_locked(src, dst)

    def _rename_session_locked(self, src: Node, dst: Node) -> None:
        session = src.session
        # The target is a name at the root: free, or an existing session (replaced if empty).
        if dst.kind == ROOT or (dst.session is not None and dst.kind != SESSION):
            raise NotPermitted("sessions live at the root only")
        name = dst.name
        check_session_name(name)
        if name == session.name:
            return
        if dst.kind == ROOT_STATUS_FILE:
            raise NotPermitted("status is reserved")
        other = self.engine.sessions.get(name)
        if other is not None:
            self._discard_session_locked(other)  # NotEmpty unless it is empty (POSIX)
        self.engine.rename_session_locked(session, name)

    def unlink(self, path: str) -> None:
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind in (ROOT_STATUS_FILE, STATUS):
                return  # a no-op that succeeds, so rm -r of a session or of the mount works
            if node.kind == MARKER:
                self._unlink_marker_locked(node.session)
            elif node.kind == FILE:
                if self._hidden.pop((node.session.id, node.name), None) is not None:
                    return  # libfuse's last release of a file unlinked while open: gone already
                if node.record.in_tree:
                    self._check_tree_open_locked(node.session, node.parent)
                self.engine.remove_file_locked(node.record)
                self._touch_parent_locked(node)
            elif node.kind == MISSING:
                raise NotFound(path)
            else:
                raise IsADirectory(path)

    def _unlink_marker_locked(self, session: SessionRecord) -> None:
        if not self._marker_listed(session):
            raise NotFound(CREATE_MARKER)
        project = session.project
        if project is None:
            return
        if project.state in (P_WAITING, "failed"):
            self.engine.cancel_project_locked(session)
            return
        # The project exists and stays; the marker just leaves the listing so rm -r works.
        self.engine.hide_marker_locked(session)

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
        self._set_attrs(path, mtime_ns=time.time_ns() if mtime_ns is None else mtime_ns)

    def _set_attrs(self, path: str, **attrs) -> None:
        if not attrs:
            return
        with self.engine.lock:
            node = self._resolve_locked(path)
            now = time.time_ns()
            if node.kind == SESSION:
                self.engine.set_session_attrs_locked(node.session, mode=attrs.get("mode"),
                                                     mtime_ns=attrs.get("mtime_ns"))
                node.session.ctime_ns = now
            elif node.kind == DIR:
                folder = node.folder
                folder.mode = attrs.get("mode", folder.mode)
                folder.mtime_ns = attrs.get("mtime_ns", folder.mtime_ns)
                folder.ctime_ns = now
                self.engine.update_folder_locked(folder.id, mode=folder.mode, mtime_ns=folder.mtime_ns)
            elif node.kind == FILE:
                self.engine.set_file_attrs_locked(node.record, **attrs)
                node.record.ctime_ns = now
            elif node.kind == MISSING:
                raise NotFound(path)
            # The mount, status files and .create have no metadata of their own: accepted.

    # --- extended attributes -----------------------------------------------------------------------

    def getxattr(self, path: str, name: str) -> bytes:
        if name not in XATTRS:
            raise NoAttribute(name)
        with self.engine.lock:
            node = self._resolve_locked(path)
            if node.kind != FILE:
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
            return list(XATTRS) if self._resolve_locked(path).kind == FILE else []

    def setxattr(self, path: str, name: str, value: bytes, options: int) -> None:
        raise NotSupported("fs360's attributes are read-only")

    def removexattr(self, path: str, name: str) -> None:
        raise NotSupported("fs360's attributes are read-only")

    # --- for tests and the CLI ---------------------------------------------------------------------

    def file_state(self, session: str, name: str) -> str:
        with self.engine.lock:
            return self._file(self._session(session), name).state

