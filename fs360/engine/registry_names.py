"""The registry's server names: each file's flat, de-duplicated name in its session, frozen once
the server may hold bytes under it (see server_names.py for the flattening)."""

from __future__ import annotations

from collections import ChainMap

from .records import UPLOADING, FileRecord, SessionRecord
from .registry_base import RegistryState
from .server_names import deduplicated, server_name_for


class ServerNames(RegistryState):
    """Each file's server name, unique in its session (lower-cased), frozen once sent."""

    def choose_server_name_locked(self, record: FileRecord, session: SessionRecord,
                                  avoid: set[str] = frozenset()) -> None:
        """Gives `record` the server name of its local name, de-duplicated in its session
        against every other file's name and `avoid` (names the server already holds)."""
        self.release_server_name_locked(record, session)
        chosen = self._free_server_name_locked(record.name, session, avoid)
        session.server_names[chosen.lower()] = record
        if chosen != record.server_name:
            record.server_name = chosen
            self.journal.update_file(record.id, server_name=chosen)

    @staticmethod
    def _free_server_name_locked(name: str, session: SessionRecord, avoid: set[str] = frozenset()) -> str:
        # Looked up in place: a copy of the session's names for each new file costs O(files) each.
        return deduplicated(server_name_for(name), ChainMap(session.server_names, dict.fromkeys(avoid)))

    def release_server_name_locked(self, record: FileRecord, session: SessionRecord | None = None) -> None:
        session = session or self._sessions_by_id.get(record.session_id)
        if session is not None and record.server_name \
                and session.server_names.get(record.server_name.lower()) is record:
            del session.server_names[record.server_name.lower()]

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

    @staticmethod
    def server_listing_locked(session: SessionRecord, upload_id: str, listing) -> dict[str, FileRecord | None]:
        """The server listed what `upload_id` holds (RemoteFile entries): the names it holds bytes
        of, with the record each is ours for (None: not ours), kept while it is the session's."""
        ours = {r.server_name.lower(): r for r in session.server_names.values()
                if r.upload_id == upload_id and r.server_name}
        held = {f.name.lower(): ours.get(f.name.lower()) for f in listing if f.received > 0}
        if session.upload_id == upload_id:
            session.remote_names = held
        return held

    def claim_server_name_locked(self, record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """The first PUT of `record` is about to go: one write, and from here the server may hold
        bytes of it under its name."""
        record.upload_id = upload_id
        record.state = UPLOADING
        if session.upload_id == upload_id and session.remote_names is not None:
            session.remote_names[record.server_name.lower()] = record
        self.journal.update_file(record.id, state=UPLOADING, upload_id=upload_id)

    def name_held_by_another_locked(self, record: FileRecord, session: SessionRecord, upload_id: str) -> None:
        """The server holds another file's bytes under `record`'s server name (and none of ours):
        the name is marked as not ours, the claim is dropped and the file takes the next free name."""
        taken = record.server_name.lower()
        if session.upload_id == upload_id and session.remote_names is not None:
            session.remote_names[taken] = None
        record.upload_id = None
        record.server_received = 0
        self.journal.update_file(record.id, upload_id=None, server_received=0)
        self.choose_server_name_locked(record, session, avoid=set(session.remote_names or ()) | {taken})

    def forget_unsent_locked(self, record: FileRecord, session: SessionRecord) -> None:
        """Cancelled before its first PUT went out: the server holds nothing of it after all, so
        a file deleted meanwhile leaves no trace and its name is free again."""
        if record.server_received:
            return
        record.upload_id = None
        if session.remote_names is not None and record.server_name \
                and session.remote_names.get(record.server_name.lower()) is record:
            del session.remote_names[record.server_name.lower()]
        if record.unlinked and record in session.unlinked:
            session.unlinked.remove(record)
            self._forget_file_locked(record, session)
            self.nudge()
        elif record.id in self._files:
            self.journal.update_file(record.id, upload_id=None)

