"""A session's tree as its one archive: what goes in, whether it may, and its plan.

When `.create` is accepted for a session with folders, the tree is frozen and
planned as one `.zip` upload (the server unpacks a session's one archive). The
members and the size come from names and sizes alone; the bytes are streamed
from the spool at upload time by `archive.ArchiveReader`.
"""

from __future__ import annotations

import hashlib
import logging

from ..config import Settings
from ..errors import InvalidArgument
from .archive import ArchiveMember, ArchiveReader
from .records import CLOSED, IN_TREE, WRITING, SessionRecord, in_scratch_folder
from .registry import Registry
from .server_names import server_name_for

log = logging.getLogger(__name__)

# Top-level names the server unpacks as a session's one archive (api.md).
ARCHIVE_EXTENSIONS = ("zip", "7z", "rar")


class TreeArchive:
    def __init__(self, settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry

    def members_locked(self, session: SessionRecord) -> list[ArchiveMember]:
        """The session's tree as archive members: its files, with their spool files as sources,
        and its empty folders; nothing of dot-folders. The same tree gives the same members,
        after a restart too (the journal keeps both the files and the folders)."""
        files = session.archived_files()  # a file deleted after .create is still in it
        folders = [path for path in self.registry.folder_paths_locked(session) if not in_scratch_folder(path)]
        held = {f.name.rpartition("/")[0] for f in files} | {p.rpartition("/")[0] for p in folders}
        # A folder holding nothing of the tree at any depth is an entry of its own.
        nonempty = {"/".join(path.split("/")[:depth]) for path in held if path
                    for depth in range(1, path.count("/") + 2)}
        spool = self.registry.spool
        members = [ArchiveMember(f.name, str(spool.path(f.id)), f.size) for f in files]
        members += [ArchiveMember(path + "/") for path in folders if path not in nonempty]
        return members

    def server_name_locked(self, session: SessionRecord) -> str:
        """The archive's server name: the session's name, de-duplicated against its top-level files."""
        if session.archive is not None:
            return session.archive.server_name
        return self.registry.free_server_name_locked(session.name + ".zip", session)

    def refusal_locked(self, session: SessionRecord, archive_size: int | None = None) -> str:
        """Why the session's tree cannot go up as its archive ('' when it can, or has no tree)."""
        tree = session.tree_files()
        for record in session.uploads():
            if not record.archive and server_name_for(record.name).rpartition(".")[2] in ARCHIVE_EXTENSIONS:
                return (f"this folder already has an archive ({record.name}); the server takes one: "
                        f"remove one of them")
        unfinished = [f for f in tree if f.open_writers or f.state != IN_TREE]
        if unfinished:
            return "; ".join(f"{f.name}: still being written (by a program that has not exited)"
                             if f.open_writers or f.state in (WRITING, CLOSED)
                             else f"{f.name}: {f.state} ({f.last_error}); delete it or copy it again"
                             for f in sorted(unfinished, key=lambda f: f.name))
        cap = self.registry.caps.file_cap
        if cap and archive_size is not None and archive_size > cap:
            return (f"the tree makes a {archive_size}-byte archive; the server takes files up to {cap} bytes: "
                    f"send part of it in another folder")
        return ""

    def plan_locked(self, session: SessionRecord) -> None:
        """Freezes the tree (if any) as one upload of its own, or raises InvalidArgument with the
        reason it cannot (nothing changes then). The size is known without reading any data."""
        members = self.members_locked(session)
        if not members:
            return
        size = self.check_locked(session, members)
        record = self.registry.add_archive_locked(session, size, self.server_name_locked(session))
        log.info("session %r: its tree of %d entries goes up as %s (%d bytes)", session.name, len(members),
                 record.server_name, size)

    def check_locked(self, session: SessionRecord, members: list[ArchiveMember] | None = None) -> int:
        """The size the tree's archive would have; InvalidArgument with the reason it cannot be
        planned (0 when there is no tree)."""
        members = self.members_locked(session) if members is None else members
        if not members:
            return 0
        reason = self.refusal_locked(session)
        size = 0
        if not reason:
            with ArchiveReader(members, force_zip64=self.settings.archive_zip64) as planned:
                size = planned.size
            reason = self.refusal_locked(session, size)
        if reason:
            raise InvalidArgument(reason)
        return size

    def sha256(self, members: tuple[ArchiveMember, ...]) -> str:
        """The sha256 of the archive as uploaded, for status (read once more, from the spool;
        no lock needed: the tree is frozen)."""
        digest = hashlib.sha256()
        with ArchiveReader(members, force_zip64=self.settings.archive_zip64) as reader:
            block = bytearray(1 << 20)
            offset = 0
            while offset < reader.size:
                n = reader.read_at(offset, block)
                digest.update(memoryview(block)[:n])
                offset += n
        return digest.hexdigest()
