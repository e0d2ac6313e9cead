"""rename(2): of sessions, folders within their session, and files (between sessions too),
including libfuse's hiding of a file unlinked while open and a re-copy renamed onto its original."""

from __future__ import annotations

import time

from ..errors import (AccessDenied, CrossDevice, Fs360Error, InvalidArgument, IsADirectory, NotADirectory, NotEmpty,
                      NotFound, NotPermitted)
from ..engine.content_digest import is_legacy_digest
from .content_check import LegacyDigest, compared_on_rewrite_locked, content_stamp, is_identical_copy
from .exits import Closer, Writers
from .markers import MAX_CREATE_BYTES, Markers
from .names import CREATE_MARKER, check_file_name, check_session_name
from .rules import (check_mutable_locked, check_not_sealed, check_tree_open_locked, check_tree_removal_locked,
                    check_uploadable_name_locked, refused_recopy_reason_locked)
from .tree import DIR, FILE, MARKER, MISSING, ROOT, ROOT_STATUS_FILE, SESSION, STATUS, Node, SessionTree

# libfuse renames a file unlinked while open to this prefix and unlinks it at its last release.
HIDDEN_PREFIX = ".fuse_hidden"


class Renames:
    def __init__(self, engine, tree: SessionTree, markers: Markers, writers: Writers):
        self.engine = engine
        self.tree = tree
        self.markers = markers
        self.writers = writers

    def rename(self, old: str, new: str, pid: int | None = None) -> None:
        """`pid`: the task renaming, when known (its program may commit a scratch file)."""
        # (The name first: every rename of an rsync or a cp -r would otherwise resolve both paths twice.)
        if new.rpartition("/")[2] == CREATE_MARKER and self._onto_marker(old, new, pid):
            return
        renamer = self.writers.identify(pid) if pid else None
        legacy = self._hash_scratch_file(old, new)
        with self.engine.lock:
            src, dst = self.tree.resolve_locked(old), self.tree.resolve_locked(new)
            if src.kind in (ROOT_STATUS_FILE, STATUS, MARKER) and dst.basename.startswith(HIDDEN_PREFIX) \
                    and dst.session is src.session:
                # libfuse hides an open file it is asked to unlink: for these, the unlink is now.
                if src.kind == MARKER:
                    self.markers.unlink_locked(src.session, renamer.name if renamer else "")
                return
            if src.kind == SESSION:
                self._rename_session_locked(src, dst)
            elif src.kind == DIR:
                self._rename_folder_locked(src, dst)
            elif src.kind == FILE:
                self._rename_file_with_reason_locked(src, dst, renamer, legacy)
            elif src.kind == MISSING:
                raise NotFound(old)
            else:
                raise NotPermitted(f"{src.name or 'the mount'} cannot be renamed")

    def _onto_marker(self, old: str, new: str, pid: int | None) -> bool:
        """A scratch file renamed onto its session's .create (rsync -a of a folder holding one
        writes `.create.XXXXXX`, then renames it) is .create written with its content, by the
        renamer: refused now with the same reason, or taken at the renamer's exit
        (Markers.take_renamed). Read and checked without the state lock: taking it at once
        waits for the tree's other writers."""
        with self.engine.lock:
            src, dst = self.tree.resolve_locked(old), self.tree.resolve_locked(new)
            if not (dst.kind == MARKER and src.kind == FILE and src.record.local_only and dst.session is src.session):
                return False
            record, mtime_ns = src.record, src.record.mtime_ns
        # At most one byte past the limit is read: a larger one is refused for its size, as a write past it is.
        data = self._spooled(record)
        renamer = self.writers.identify(pid) if pid else None
        self.markers.take_renamed(src.session, data, mtime_ns, renamer)
        with self.engine.lock:
            if src.session.files.get(record.name) is record:
                self.engine.registry.remove_file_locked(record)
                self.tree.touch_parent_locked(src)
        return True

    def _spooled(self, record) -> bytes:
        """A small file's content, its writes done behind its writers included."""
        self.engine.spool.behind.settle(record.id)
        with open(self.engine.spool.path(record.id), "rb") as spooled:
            return spooled.read(MAX_CREATE_BYTES + 1)

    def _hash_scratch_file(self, old: str, new: str) -> LegacyDigest | None:
        """A scratch file about to be renamed (to its final name, or onto a file the server holds)
        whose digest its writes did not give is hashed now, without the state lock: the rename
        itself then only compares, and its upload is queued with the digest known. Renamed onto
        a held file whose journal has an earlier build's sha256, its sha256 is read too (returned)."""
        with self.engine.lock:
            src = self.tree.resolve_locked(old)
            record = src.record if src.kind == FILE and src.record.local_only else None
            if record is None:
                return None
            dst = self.tree.resolve_locked(new)
            held = dst.record if dst.kind == FILE and compared_on_rewrite_locked(self.engine, dst.record) else None
            like = held.sha256 if held is not None and is_legacy_digest(held.sha256) else None
            stamp = content_stamp(record)
            # (one still written to is hashed at its last close)
            unhashed = not record.open_writers and self.engine.registry.known_digest(record) is None
        if unhashed:
            self.engine.registry.content_digest(record)
        if like is None:
            return None
        value = self.engine.registry.content_digest(record, like=like)
        return LegacyDigest(value, stamp) if value is not None else None

    def _rename_file_with_reason_locked(self, src: Node, dst: Node, renamer: Closer | None,
                                        legacy: LegacyDigest | None) -> None:
        """A move to another session that is refused leaves its reason on the file (its
        user.fs360.error and status): a file manager only shows "permission denied"."""
        try:
            self._rename_file_locked(src, dst, renamer, legacy)
        except Fs360Error as exc:
            if dst.session is not None and dst.session is not src.session and not src.record.local_only:
                self.engine.registry.set_file_attrs_locked(src.record, last_error=f"not moved to {dst.session.name}: {exc}")
            elif dst.session is not None and src.record.local_only and dst.kind in (FILE, MISSING) \
                    and not self.tree.local_only(dst.name):
                # A program's copy put in place under its final name (rsync, zip, perl -i): the
                # program only says "permission denied", and the copy's name means nothing to the user.
                self.engine.registry.name_refused_locked(dst.session, dst.name, f"not put in place: {exc}")
            raise

    def _rename_file_locked(self, src: Node, dst: Node, renamer: Closer | None,
                            legacy: LegacyDigest | None) -> None:
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
        if replaced is not None and record.local_only and compared_on_rewrite_locked(self.engine, replaced):
            self._replace_held_locked(src, dst, legacy)
            return
        check_mutable_locked(self.engine, record)  # (a scratch file is always free to move)
        check_not_sealed(target)
        check_tree_open_locked(target, dst.parent)
        if replaced is not None:
            # An open writer of the replaced file keeps its handle, on a record no longer listed.
            check_mutable_locked(self.engine, replaced)
        local_only = self.tree.local_only(name)
        if not local_only:
            check_uploadable_name_locked(self.engine, target, name)
            if record.local_only and not record.open_writers:
                # A closed scratch file renamed to its final name: the renamer's exit decides too.
                self.writers.joined_locked(renamer, record)
        self.engine.registry.rename_file_locked(record, target, name, local_only)
        self.engine.registry.set_file_attrs_locked(record, ctime_ns=time.time_ns())
        self.tree.touch_parent_locked(src, dst)

    def _rename_folder_locked(self, src: Node, dst: Node) -> None:
        """A folder moves, with everything in it, within its session."""
        session = src.session
        if dst.session is not session:
            self._folder_out_of_its_session_locked(src, dst)
        replaces = dst.kind == DIR and dst.name != src.name
        if replaces:
            if not self.tree.is_empty_locked(session, dst.name):
                raise NotEmpty(dst.name)
        elif dst.kind != MISSING:
            raise NotADirectory(dst.name) if dst.kind == FILE else NotPermitted(f"{dst.name} is reserved")
        if (dst.name + "/").startswith(src.name + "/"):
            raise InvalidArgument("a folder cannot move into itself")
        check_file_name(dst.basename)
        check_tree_open_locked(session, src.name)
        check_tree_open_locked(session, dst.name)
        if replaces:
            # The empty folder goes (POSIX) only once the move is sure to be made.
            self.tree.remove_folder_locked(session, dst.name)
        self.tree.move_folder_locked(session, src.name, dst.name)
        self.tree.touch_parent_locked(src, dst)

    def _folder_out_of_its_session_locked(self, src: Node, dst: Node) -> None:
        """A tree's folder moved to another session (or to the root, a new session): a tree is its
        session's archive, so it is not renamed there. EXDEV: `mv` (and file managers) then copy it
        and delete the original, as between file systems, and each step follows the rules of its
        own (the copies are new files of the target; the deletions those of the source's tree).
        A folder whose tree is frozen cannot be deleted either: refused at once, with the reason in
        the source session's status (mv prints only the errno)."""
        where = dst.session.name if dst.session is not None else "the mount's root"
        try:
            check_tree_removal_locked(src.session, src.name)
        except Fs360Error as exc:
            self.engine.registry.name_refused_locked(src.session, src.name, f"not moved to {where}: {exc}")
            raise
        raise CrossDevice(f"{src.name}: a folder moves only within its session; moved to {where}, it is "
                          f"copied and then deleted here (mv does that by itself)")

    def _hide_locked(self, src: Node, dst: Node) -> None:
        """libfuse renames a file unlinked while open to `.fuse_hidden…` and unlinks that name at
        the last release: for fs360 the unlink happens now (the server-held or not rules of
        `unlink`), and the open handles keep working on their spool file, reachable by that name."""
        self.engine.registry.remove_file_locked(src.record)
        self.engine.registry.set_file_attrs_locked(src.record, ctime_ns=time.time_ns())
        self.tree.hide_locked(src.session, dst.name, src.record)
        self.tree.touch_parent_locked(src)

    def _replace_held_locked(self, src: Node, dst: Node, legacy: LegacyDigest | None) -> None:
        """A local scratch file (rsync's `.name.XXXXXX`) renamed onto a name the server holds (or a
        frozen tree's file, see content_check.py):
        a re-run of the same copy is accepted (the copy is dropped), anything else refused."""
        copy, held = src.record, dst.record
        # The copy may still be open: GIO renames its `.goutputstream-*` before closing it.
        if not is_identical_copy(self.engine, copy, held, legacy):
            raise AccessDenied(refused_recopy_reason_locked(self.engine, held))
        self.engine.registry.keep_identical_locked(held, copy=copy)
        self.tree.touch_parent_locked(src, dst)

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
        other = self.engine.registry.sessions.get(name)
        if other is not None:
            # NotEmpty unless it is empty (POSIX)
            self.tree.discard_session_locked(other, self.markers.listed(other))
        self.engine.registry.rename_session_locked(session, name)
