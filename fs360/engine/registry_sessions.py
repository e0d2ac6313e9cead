"""The registry's sessions, their projects and their tree's folders (see registry.py: the
state, the lock and the journal are the Registry's)."""

from __future__ import annotations

import logging
import time

from .journal import PROJECT_COLUMNS
from .records import CLOSED, LOST, PENDING, UNFINISHED_STATES, UPLOADING, WRITING, ProjectRequest, SessionRecord, \
    in_scratch_folder
from .registry_base import RegistryState, project_may_use

log = logging.getLogger(__name__)

# A folder's mtime changes with every name that comes or goes in it (cp -r of 100,000 files):
# journaled at most once per this many seconds per folder, memory has it exact, housekeeping
# writes the rest at its next round (every 0.5 s) and the engine at its stop. A crash of the
# daemon may leave a folder's mtime this much older.
TOUCH_JOURNAL_SECONDS = 1.0


ARCHIVE_LOST_AFTER_DELETION = ("the server lost this folder's upload session, and a file or folder of its tree was "
                               "deleted here since: the archive cannot be made again as planned; remove .create to "
                               "plan it anew from the tree as it is now, or copy the tree into a new folder")

class SessionsAndFolders(RegistryState):
    """Sessions, the projects requested for them, and the folders of their trees."""

    # --- sessions -----------------------------------------------------------------------------

    def create_session_locked(self, name: str, mode: int, uid: int | None = None,
                              gid: int | None = None) -> SessionRecord:
        now_ns = time.time_ns()
        session_id = self.journal.insert_session(dict(name=name, upload_id=None, expires_at=None, mode=mode,
                                                      mtime_ns=now_ns, sealed=0, uid=uid, gid=gid))
        session = SessionRecord(id=session_id, name=name, mode=mode, mtime_ns=now_ns, uid=uid, gid=gid)
        self.sessions[name] = session
        self._sessions_by_id[session_id] = session
        return session

    def rename_session_locked(self, session: SessionRecord, new_name: str) -> None:
        del self.sessions[session.name]
        session.name = new_name
        self.sessions[new_name] = session
        self.journal.update_session(session.id, name=new_name)

    def discard_session_locked(self, session: SessionRecord) -> str | None:
        """rmdir: forgets the session and its spool. Returns the server session to delete (None:
        none, or a project may use it)."""
        archive = [session.archive] if session.archive is not None else []
        for record in list(session.files.values()) + session.unlinked + archive:
            record.generation += 1
            self.spool.remove(record.id)
            self._files.pop(record.id, None)
        del self.sessions[session.name]
        del self._sessions_by_id[session.id]
        self.journal.delete_session(session.id)
        if session.upload_id and not project_may_use(session, session.upload_id):
            return session.upload_id
        return None

    def set_session_attrs_locked(self, session: SessionRecord, mode: int | None = None,
                                 mtime_ns: int | None = None, uid: int | None = None, gid: int | None = None) -> None:
        """chmod, chown, utimens of the session's folder: its ctime is now."""
        if mode is not None:
            session.mode = mode
        if mtime_ns is not None:
            session.mtime_ns = mtime_ns
            self._touches_behind.pop(("sessions", session.id), None)  # never written over later
        if uid is not None:
            session.uid = uid
        if gid is not None:
            session.gid = gid
        self.journal.update_session(session.id, mode=session.mode, mtime_ns=session.mtime_ns, uid=session.uid,
                                    gid=session.gid)
        session.ctime_ns = time.time_ns()

    def touch_session_locked(self, session: SessionRecord, now_ns: int) -> None:
        """A name came or went at the session's top level: its mtime and ctime are now (the mtime
        journaled soon)."""
        session.mtime_ns = session.ctime_ns = now_ns
        self._touch_locked(("sessions", session.id), now_ns)

    def touch_folder_locked(self, folder_id: int, now_ns: int) -> None:
        """A name came or went in a folder of the tree: its mtime is now (journaled soon)."""
        self._touch_locked(("dirs", folder_id), now_ns)

    def _touch_locked(self, key: tuple[str, int], now_ns: int) -> None:
        now = time.monotonic()
        if now - self._touch_journaled_at.get(key, -TOUCH_JOURNAL_SECONDS) < TOUCH_JOURNAL_SECONDS:
            self._touches_behind[key] = now_ns
            return
        self._touches_behind.pop(key, None)
        self._touch_journaled_at[key] = now
        self._journal_mtime(key, now_ns)

    def write_touches_locked(self) -> None:
        """Journals the folder mtimes memory has newer (housekeeping's rounds, the engine's stop)."""
        behind, self._touches_behind = self._touches_behind, {}
        now = time.monotonic()
        for key, mtime_ns in behind.items():
            self._touch_journaled_at[key] = now
            self._journal_mtime(key, mtime_ns)
        if len(self._touch_journaled_at) > len(self.sessions) + len(self._folders) + 1000:
            self._touch_journaled_at.clear()  # of folders long gone: forgetting only allows a write sooner

    def _journal_mtime(self, key: tuple[str, int], mtime_ns: int) -> None:
        table, row_id = key
        (self.journal.update_session if table == "sessions" else self.journal.update_dir)(row_id, mtime_ns=mtime_ns)

    def session_opened_locked(self, session: SessionRecord, upload_id: str, expires_in: float) -> None:
        session.upload_id = upload_id
        self._new_upload_id_locked(session, listing_known=True)  # a new session holds nothing
        session.expires_at = time.time() + expires_in
        self.journal.update_session(session.id, upload_id=upload_id, expires_at=session.expires_at)

    def session_lost_locked(self, session: SessionRecord, dead_upload_id: str) -> str | None:
        """The server lost the session (404 or expiry): every file goes again from the spool.
        Returns the dead server session to delete (None: nothing to do, or a project may use it)."""
        if session.upload_id != dead_upload_id or not self.holds_session_locked(session):
            return None  # somebody already handled it, or the session was discarded (rmdir)
        log.warning("session %r: the server no longer has upload session; sending its files again", session.name)
        session.upload_id = None
        session.expires_at = None
        self._new_upload_id_locked(session, listing_known=False)
        self.journal.update_session(session.id, upload_id=None, expires_at=None)
        # A tree file deleted here once the archive was up (remembered in `unlinked`), or a tree folder
        # removed (the archive marked evicted: remove_folder_locked): it cannot be made again as planned.
        tree_changed = any(record.in_tree for record in session.unlinked) or \
            (session.archive is not None and session.archive.evicted)
        for record in session.unlinked:
            self.release_server_name_locked(record)
            self._files.pop(record.id, None)
            self.journal.delete_file(record.id)
            self.spool.remove(record.id)
        session.unlinked.clear()
        for record in session.uploads():
            if record.state in (WRITING, CLOSED) + UNFINISHED_STATES:
                continue
            # The server holds nothing of it now, journaled too: after a remount it is not taken for a
            # file the server may hold (which can never change, nor be replaced).
            on_no_server = dict(server_received=0, upload_id=None)
            if record.state == UPLOADING:
                # Its worker meets the 404 itself and puts it back in the queue.
                self.journal.update_file(record.id, **on_no_server)
                record.server_received, record.upload_id = 0, None
                continue
            if record.archive and tree_changed:
                self.set_state_locked(record, LOST, last_error=ARCHIVE_LOST_AFTER_DELETION, **on_no_server)
                continue
            if record.evicted:
                self.set_state_locked(record, LOST, last_error="the server lost this file and the local copy "
                                                               "was already dropped: copy it again", **on_no_server)
                continue
            self.set_state_locked(record, PENDING, last_error="", attempts=0, **on_no_server)
            self._schedule(record, 0.0)
        self.nudge()
        # Idempotent: if the server still has it somewhere, it stops using the account's quota.
        return None if project_may_use(session, dead_upload_id) else dead_upload_id

    @staticmethod
    def name_refused_locked(session: SessionRecord, name: str, reason: str) -> None:
        """A file of `name` could not be made in the folder: status shows why (the last 20)."""
        session.refused_names.pop(name, None)
        session.refused_names[name] = reason
        while len(session.refused_names) > 20:
            session.refused_names.pop(next(iter(session.refused_names)))

    @staticmethod
    def marker_refused_locked(session: SessionRecord, reason: str) -> None:
        """Why the last .create was refused ('' once one is accepted): status shows it."""
        session.marker_refused = reason

    @staticmethod
    def marker_cancelled_locked(session: SessionRecord, reason: str) -> None:
        """Why the session's project request was cancelled ('' once a .create is accepted): status shows it."""
        session.marker_cancelled = reason

    @staticmethod
    def project_notice_locked(session: SessionRecord, notice: str) -> None:
        """What stops the session's project now ('' when nothing does): status shows it."""
        session.notice = notice

    def seal_locked(self, session: SessionRecord) -> None:
        session.sealed = True
        self.journal.update_session(session.id, sealed=1)

    # --- projects -----------------------------------------------------------------------------

    def set_project_locked(self, session: SessionRecord, project: ProjectRequest | None) -> None:
        session.project = project
        if project is None:
            session.notice = ""
            self.journal.delete_project(session.id)
        else:
            self.journal.upsert_project(session.id, {c: getattr(project, c) for c in PROJECT_COLUMNS})

    def update_project_locked(self, session: SessionRecord, **values) -> None:
        self.journal.update_project(session.id, **values)
        for key, value in values.items():
            setattr(session.project, key, value)

    def hide_marker_locked(self, session: SessionRecord) -> None:
        """`unlink .create` after the project exists: the project stays, the marker leaves the listing."""
        self.update_project_locked(session, marker_hidden=True)

    # --- folders of a session's tree (the path model keeps them; the journal remembers them) --------

    def folder_rows_locked(self) -> list:
        """Every journaled folder: rows of (id, session_id, path, mode, mtime_ns), read once by the
        path model when it starts."""
        return self.journal.dirs()

    def folder_paths_locked(self, session: SessionRecord) -> list[str]:
        """The paths of the session's folders, sorted (the same tree gives the same archive)."""
        return sorted(path for session_id, path in self._folders.values() if session_id == session.id)

    def add_folder_locked(self, session: SessionRecord, path: str, mode: int, mtime_ns: int,
                          uid: int | None = None, gid: int | None = None) -> int:
        folder_id = self.journal.insert_dir(session.id, path, mode, mtime_ns, uid, gid)
        self._folders[folder_id] = (session.id, path)
        return folder_id

    def update_folder_locked(self, folder_id: int, **values) -> None:
        if "mtime_ns" in values:
            self._touches_behind.pop(("dirs", folder_id), None)  # never written over later
        self.journal.update_dir(folder_id, **values)
        if "path" in values and folder_id in self._folders:
            self._folders[folder_id] = (self._folders[folder_id][0], values["path"])

    def remove_folder_locked(self, folder_id: int) -> None:
        self.journal.delete_dir(folder_id)
        session_id, path = self._folders.pop(folder_id, (None, ""))
        session = self._sessions_by_id.get(session_id)
        if session is not None and session.archive_complete and not in_scratch_folder(path):
            # The server holds the archive with this folder in it: part of what it was made of is gone.
            session.archive.evicted = True
            self.journal.update_file(session.archive.id, evicted=1)

    def remove_folders_of_locked(self, session: SessionRecord) -> None:
        self.journal.delete_dirs_of(session.id)
        for folder_id in [i for i, (session_id, _) in self._folders.items() if session_id == session.id]:
            del self._folders[folder_id]

