"""The stat attributes of each kind of entry, as getattr and listings return them."""

from __future__ import annotations

import stat
import time

from ..engine.records import FileRecord, SessionRecord
from .rules import frozen_reason_locked
from .tree import Folder, is_listed_locked

# Advertised I/O size: cp, stdio and Python size their buffers by it, so their
# writes reach the mount as 1 MiB requests (the kernel's max_write) instead of 128 KiB.
IO_BLOCK_SIZE = 1024 * 1024

# Inode numbers (the mount runs with use_ino): an entry keeps its number for its whole life,
# through renames, whatever libfuse does with its own nodes (a name whose node it dropped gets
# a new node, and without use_ino a new number: pjdfstest saw a file's number change across a
# rename and back under load). Each kind of entry has its own space, from the id that names it
# (a file's journal id is never used again; a folder's or a session's is unique while it exists).
ROOT_INO = 1
SESSION, FOLDER, FILE, STATUS_FILE, STATUS_JSON_FILE, MARKER_FILE = range(2, 8)
INO_KINDS = 8


def inode_number(kind: int, entry_id: int) -> int:
    """The inode number of the entry of `kind` named by `entry_id` (a session's id for its
    status files and .create, 0 for the root's status)."""
    return entry_id * INO_KINDS + kind


class Attributes:
    """Folders belong to whoever made them (a shared mount), else to the mount's owner (`uid`,
    `gid`), as virtual files do; files to theirs. A folder's link count is 2 and one per folder
    in it."""

    def __init__(self, engine, uid: int, gid: int):
        self.engine = engine
        self.uid = uid
        self.gid = gid

    def session(self, session: SessionRecord, subfolders: int) -> dict:
        attrs = self.dir(inode_number(SESSION, session.id), session.mode, session.mtime_ns, 2 + subfolders,
                         session.uid, session.gid)
        attrs["st_ctime"] = max(session.ctime_ns, session.mtime_ns)
        return attrs

    def folder(self, folder: Folder, subfolders: int) -> dict:
        attrs = self.dir(inode_number(FOLDER, folder.id), folder.mode, folder.mtime_ns, 2 + subfolders,
                         folder.uid, folder.gid)
        attrs["st_ctime"] = max(folder.ctime_ns, folder.mtime_ns)
        return attrs

    def dir(self, ino: int, mode: int, mtime_ns: int, nlink: int = 2, uid: int | None = None,
            gid: int | None = None) -> dict:
        return {"st_ino": ino, "st_mode": stat.S_IFDIR | (mode & 0o7777), "st_nlink": nlink,
                "st_uid": self.uid if uid is None else uid, "st_gid": self.gid if gid is None else gid,
                "st_size": 4096, "st_mtime": mtime_ns, "st_ctime": mtime_ns, "st_atime": mtime_ns}

    def virtual(self, ino: int, mode: int, mtime_ns: int | None = None, size: int = 0) -> dict:
        now = mtime_ns or time.time_ns()
        # Status files are served with direct_io (read to EOF), but copy tools trust the size.
        return {"st_ino": ino, "st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_uid": self.uid,
                "st_gid": self.gid, "st_size": size, "st_mtime": now, "st_ctime": now, "st_atime": now}

    def file(self, record: FileRecord) -> dict:
        """Needs engine.lock held. A file unlinked while open has no link left (nlink 0); one that
        can no longer change (the server may hold bytes of it, the session is sealed) shows no
        write permission, as any write would get EACCES."""
        mode = record.mode & 0o7777
        try:
            if mode & 0o222 and frozen_reason_locked(self.engine, record):
                mode &= ~0o222
        except KeyError:
            pass  # its session is gone (removed while the file was open): nothing to protect
        return {"st_ino": inode_number(FILE, record.id), "st_mode": stat.S_IFREG | mode,
                "st_nlink": 1 if is_listed_locked(self.engine, record) else 0,
                "st_uid": record.uid, "st_gid": record.gid, "st_size": record.size,
                "st_blocks": (record.size + 511) // 512, "st_blksize": IO_BLOCK_SIZE,
                "st_mtime": record.mtime_ns, "st_ctime": max(record.ctime_ns, record.mtime_ns),
                "st_atime": record.mtime_ns}
