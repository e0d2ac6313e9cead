"""The registry's server names: each file's flat, de-duplicated name in its session, frozen once
the server may hold bytes under it (see server_names.py for the flattening).

One table per session, `session.names`: lower-cased name -> NameEntry(the file it is chosen for,
or None when the server holds another file's bytes under it; whether the server may hold bytes
under it in the session's upload_id). A name is free only when the table lacks it, so a name the
server holds is never chosen again, whichever file held it or where that file went."""

from __future__ import annotations

from .records import UPLOADING, FileRecord, NameEntry, SessionRecord
from .registry_base import RegistryState
from .server_names import deduplicated, server_name_for


class ServerNames(RegistryState):
    """Each file's server name, unique in its session (lower-cased), frozen once sent."""

    # --- choosing and releasing -----------------------------------------------------------------

    @staticmethod
    def free_server_name_locked(name: str, session: SessionRecord) -> str:
        """The server name a file of local `name` would get in `session` now."""
        return deduplicated(server_name_for(name), session.names)

    @staticmethod
    def _take_name_locked(record: FileRecord, session: SessionRecord) -> None:
        """The table learns `record`'s server name (chosen, or replayed from the journal)."""
        session.names[record.server_name.lower()] = NameEntry(record)

    @staticmethod
    def _entry_of(record: FileRecord, session: SessionRecord) -> NameEntry | None:
        entry = session.names.get(record.server_name.lower()) if record.server_name else None
        return entry if entry is not None and entry.record is record else None

    def choose_server_name_locked(self, record: FileRecord, session: SessionRecord) -> None:
        """Gives `record` the server name of its local name, free in its session."""
        self.release_server_name_locked(record, session)
        chosen = self.free_server_name_locked(record.name, session)
        if chosen != record.server_name:
            record.server_name = chosen
            self.journal.update_file(record.id, server_name=chosen)
        self._take_name_locked(record, session)

    def release_server_name_locked(self, record: FileRecord, session: SessionRecord | None = None) -> None:
        """`record` no longer goes up under its name; a name the server may hold bytes under stays
        taken (not ours any more) for as long as the session's upload_id lasts."""
        session = session or self._sessions_by_id.get(record.session_id)
        entry = self._entry_of(record, session) if session is not None else None
        if entry is None:
            return
        if entry.on_server:
            entry.record = None
        else:
            del session.names[record.server_name.lower()]

    def _rechoose_server_name_locked(self, record: FileRecord, source: SessionRecord) -> None:
        """After a rename: a file nothing of which was sent takes the name of its new local name."""
        if record.may_be_on_server and record.server_name:
            return  # frozen: the server may hold bytes under it
        self.release_server_name_locked(record, source)
        if record.local_only or record.in_tree:
            if record.server_name:
                record.server_name = None  # it goes up inside the archive, under its path
                self.journal.update_file(record.id, server_name=None)
            return
        self.choose_server_name_locked(record, self.session_of(record))

    # --- what the server holds ------------------------------------------------------------------

    @staticmethod
    def _new_upload_id_locked(session: SessionRecord, listing_known: bool) -> None:
        """The session's upload_id changed (opened: it holds nothing; lost: none yet): no name is
        on the server any more, and the names only the server held are free again."""
        session.names = {key: NameEntry(entry.record) for key, entry in session.names.items()
                         if entry.record is not None}
        session.listing_known = listing_known

    @staticmethod
    def listing_known_locked(session: SessionRecord, upload_id: str) -> bool:
        """Whether the table knows what `upload_id` holds (else: ask the server, server_listing_locked)."""
        return session.upload_id == upload_id and session.listing_known

    @staticmethod
    def server_listing_locked(session: SessionRecord, upload_id: str, listing) -> None:
        """The server listed what `upload_id` holds (RemoteFile entries): each name it holds bytes
        of is on the server, ours when its file was sent there, else not ours. Added to what the
        table knows, never taken from it (a listing read before a PUT of ours misses that PUT)."""
        if session.upload_id != upload_id:
            return  # lost meanwhile: the file's PUT meets the 404
        for remote in listing:
            if remote.received <= 0:
                continue
            key = remote.name.lower()
            entry = session.names.get(key)
            if entry is not None and entry.record is not None and entry.record.upload_id == upload_id:
                entry.on_server = True
            else:
                session.names[key] = NameEntry(None, on_server=True)
        session.listing_known = True

    def name_free_on_server_locked(self, record: FileRecord, session: SessionRecord) -> str | None:
        """Before the first PUT of `record` (the table knows the listing): a name the server holds
        another file's bytes under is a conflict (a resume would merge two files into one), so the
        file takes the next free name. Returns the name it could not have (None: it keeps its own)."""
        entry = session.names.get(record.server_name.lower()) if record.server_name else None
        if entry is not None and entry.record is record:
            return None
        if entry is None and record.server_name:
            self._take_name_locked(record, session)  # its entry went with an earlier upload_id
            return None
        taken = record.server_name
        self.choose_server_name_locked(record, session)
        return taken

    def claim_server_name_locked(self, record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """The first PUT of `record` is about to go: one write, and from here the server may hold
        bytes of it under its name."""
        record.upload_id = upload_id
        record.state = UPLOADING
        if session.upload_id == upload_id:
            session.names[record.server_name.lower()] = NameEntry(record, on_server=True)
        self.journal.update_file(record.id, state=UPLOADING, upload_id=upload_id)

    def name_held_by_another_locked(self, record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """The server holds another file's bytes under `record`'s server name (and none of ours):
        the name is marked as not ours, the claim is dropped and the file takes the next free name."""
        if session.upload_id == upload_id:
            session.names[record.server_name.lower()] = NameEntry(None, on_server=True)
        record.upload_id = None
        record.server_received = 0
        self.journal.update_file(record.id, upload_id=None, server_received=0)
        self.choose_server_name_locked(record, session)

    def forget_unsent_locked(self, record: FileRecord, session: SessionRecord) -> None:
        """Cancelled before its first PUT went out: the server holds nothing of it after all, so
        a file deleted meanwhile leaves no trace and its name is free again."""
        if record.server_received:
            return
        record.upload_id = None
        entry = self._entry_of(record, session)
        if entry is not None:
            entry.on_server = False
        if record.unlinked and record in session.unlinked:
            session.unlinked.remove(record)
            self.spool.remove(record.id)  # kept for this very attempt (remove_file_locked)
            self._forget_file_locked(record, session)
            self.nudge()
        elif record.id in self._files:
            self.journal.update_file(record.id, upload_id=None)
