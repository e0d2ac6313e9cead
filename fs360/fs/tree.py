"""What a path names: sessions, their folders and files (and files unlinked while open),
resolved to one node. The one place a path is parsed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import TEMPORARY_NAMES
from ..engine.records import FileRecord, SessionRecord, in_scratch_folder
from ..errors import NameTooLong, NotADirectory, NotEmpty, NotFound
from .names import CREATE_MARKER, ROOT_STATUS, STATUS_NAMES, is_local_only

# Bytes in one name (a path component), as NAME_MAX: a longer one is ENAMETOOLONG, never ENOENT.
NAME_MAX = 255

# What a path names, resolved once per operation (the way ratarmount and mountpoint-s3 do it).
ROOT, ROOT_STATUS_FILE, SESSION, STATUS, MARKER, FILE, DIR, MISSING = (
    "root", "root status", "session", "status", "marker", "file", "dir", "missing")


@dataclass(eq=False)
class Folder:
    """A folder inside a session, at any depth: a dot-folder (and all below it) is local scratch;
    any other is part of the session's tree, which goes up as one archive at .create."""
    id: int
    mode: int
    mtime_ns: int
    ctime_ns: int = 0
    # Who made it (a shared mount, allow_other); None: the mount's owner.
    uid: int | None = None
    gid: int | None = None


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


def is_listed_locked(engine, record: FileRecord) -> bool:
    """Whether the record still has a name in its folder (not unlinked, not discarded)."""
    try:
        session = engine.registry.session_of(record)
    except KeyError:
        return False
    return session.files.get(record.name) is record


class SessionTree:
    """The sessions' names. Sessions and files are the engine's records; folders and files
    unlinked while open are kept here. Every method needs engine.lock held."""

    def __init__(self, engine, local_only_patterns: tuple[str, ...]):
        self.engine = engine
        self.local_only_patterns = tuple(local_only_patterns)  # (names.py caches a matcher per tuple)
        self._top_level_patterns = self.local_only_patterns + TEMPORARY_NAMES
        # Files unlinked while open, under the name libfuse gave them: (session id, name) -> record.
        self.hidden: dict[tuple[int, str], FileRecord] = {}
        # Folders: session id -> path inside the session -> folder.
        self.folders: dict[int, dict[str, Folder]] = {}
        self._load_folders_locked()

    def _load_folders_locked(self) -> None:
        sessions = {s.id for s in self.engine.registry.sessions.values()}
        for row in self.engine.registry.folder_rows_locked():
            if row["session_id"] not in sessions:
                self.engine.registry.remove_folder_locked(row["id"])  # its session was discarded
                continue
            self.folders.setdefault(row["session_id"], {})[row["path"]] = Folder(
                row["id"], row["mode"], row["mtime_ns"], row["mtime_ns"], row["uid"], row["gid"])

    # --- resolving ------------------------------------------------------------------------------

    def session(self, name: str) -> SessionRecord:
        session = self.engine.registry.sessions.get(name)
        if session is None:
            raise NotFound(f"no session {name!r}")
        return session

    def file(self, session: SessionRecord, name: str) -> FileRecord:
        record = self.lookup_file(session, name)
        if record is None:
            raise NotFound(f"no file {name!r}")
        return record

    def lookup_file(self, session: SessionRecord, name: str) -> FileRecord | None:
        """A listed file, or one unlinked while open under the name libfuse hid it by."""
        return session.files.get(name) or self.hidden.get((session.id, name))

    def resolve_locked(self, path: str) -> Node:
        """Raises NotFound when a folder on the way is missing, NotADirectory when a file is on the way."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return Node(ROOT)
        for part in parts:
            if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise NameTooLong(f"{part[:40]}…: a name holds at most {NAME_MAX} bytes")
        if len(parts) == 1:
            if parts[0] == ROOT_STATUS:
                return Node(ROOT_STATUS_FILE, name=ROOT_STATUS)
            session = self.engine.registry.sessions.get(parts[0])
            return Node(SESSION if session else MISSING, session, parts[0])
        session = self.session(parts[0])
        name = "/".join(parts[1:])
        node = Node(MISSING, session, name)
        folders = self.folders.get(session.id, {})
        if node.parent and node.parent not in folders:
            if node.parent in session.files or node.parent.partition("/")[0] in STATUS_NAMES:
                raise NotADirectory(path)
            raise NotFound(path)
        if not node.parent and name in STATUS_NAMES:
            node.kind = STATUS
        elif not node.parent and name == CREATE_MARKER:
            node.kind = MARKER
        elif (record := self.lookup_file(session, name)) is not None:
            node.kind, node.record = FILE, record
        elif name in folders:
            node.kind, node.folder = DIR, folders[name]
        return node

    def children_locked(self, session: SessionRecord, folder: str) \
            -> tuple[list[tuple[str, FileRecord]], list[tuple[str, Folder]]]:
        """The files and the folders directly in `folder` ("" = the session itself), by name."""
        prefix = folder + "/" if folder else ""
        files = [(name[len(prefix):], record) for name, record in session.files.items()
                 if name.startswith(prefix) and "/" not in name[len(prefix):]]
        folders = [(path[len(prefix):], child) for path, child in self.folders.get(session.id, {}).items()
                   if path.startswith(prefix) and "/" not in path[len(prefix):]]
        return files, folders

    def subfolder_count_locked(self, session: SessionRecord, folder: str) -> int:
        """How many folders `folder` ("" = the session itself) holds directly: its link count is 2 more."""
        prefix = folder + "/" if folder else ""
        return sum(1 for path in self.folders.get(session.id, {})
                   if path.startswith(prefix) and "/" not in path[len(prefix):])

    def is_empty_locked(self, session: SessionRecord, folder: str) -> bool:
        return not any(self.children_locked(session, folder))

    def local_only(self, name: str) -> bool:
        """Anything in a dot-folder, and scratch names (dot-files, *.part, ...) in any folder."""
        folder, _, basename = name.rpartition("/")
        if folder and (in_scratch_folder(folder) or basename == CREATE_MARKER):
            return True  # .create means something at the session's top level only
        return is_local_only(basename, self.local_only_patterns if folder else self._top_level_patterns)

    # --- changing ---------------------------------------------------------------------------------

    def touch_parent_locked(self, *nodes: Node) -> None:
        """A name came or went: its folder's mtime and ctime change (POSIX)."""
        now = time.time_ns()
        for node in nodes:
            if node.parent:
                folder = self.folders[node.session.id][node.parent]
                folder.mtime_ns = folder.ctime_ns = now
                self.engine.registry.touch_folder_locked(folder.id, now)
            else:
                self.engine.registry.touch_session_locked(node.session, now)

    def add_folder_locked(self, session: SessionRecord, path: str, mode: int, uid: int | None = None,
                          gid: int | None = None) -> None:
        now = time.time_ns()
        folder_id = self.engine.registry.add_folder_locked(session, path, mode, now, uid, gid)
        self.folders.setdefault(session.id, {})[path] = Folder(folder_id, mode, now, now, uid, gid)

    def remove_folder_locked(self, session: SessionRecord, path: str) -> None:
        folders = self.folders[session.id]
        self.engine.registry.remove_folder_locked(folders[path].id)
        del folders[path]

    def move_folder_locked(self, session: SessionRecord, old: str, new: str) -> None:
        """Folder `old`, the folders below it and their files, to `new`."""
        prefix = old + "/"
        folders = self.folders[session.id]
        for path in [p for p in folders if p == old or p.startswith(prefix)]:
            moved = new + path[len(old):]
            folders[moved] = folders.pop(path)
            self.engine.registry.update_folder_locked(folders[moved].id, path=moved)
        for name, record in [(n, r) for n, r in session.files.items() if n.startswith(prefix)]:
            moved = new + name[len(old):]
            # Between a dot-folder and the tree, its files change between local scratch and tree files.
            self.engine.registry.rename_file_locked(record, session, moved, self.local_only(moved))

    def hide_locked(self, session: SessionRecord, name: str, record: FileRecord) -> None:
        """`record`, unlinked while open, stays reachable by the name libfuse hid it by."""
        self.hidden[(session.id, name)] = record

    def unhide_locked(self, session: SessionRecord, name: str) -> bool:
        """libfuse's last release of a file unlinked while open unlinks its hidden name: whether it was one."""
        return self.hidden.pop((session.id, name), None) is not None

    def discard_session_locked(self, session: SessionRecord, marker_listed: bool) -> None:
        if session.files or marker_listed or self.folders.get(session.id):
            raise NotEmpty(f"{session.name} still lists files")
        # Files unlinked while open do not hold the folder (POSIX): their handles keep
        # working on the spool file they opened, and their last close finds no record.
        self.engine.discard_session_locked(session)
        for key in [key for key in self.hidden if key[0] == session.id]:
            del self.hidden[key]
        self.folders.pop(session.id, None)
        self.engine.registry.remove_folders_of_locked(session)
