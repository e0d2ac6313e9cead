"""One upload attempt of one file, and how its outcome settles the file's state.

An attempt opens the server session if needed (usually `open_early` did, as the
folder's first file was written; never sleeping on the pacer; one request per folder
at a time, whose failure the folder's other files share), makes
sure the file's server name holds no other file's bytes, hashes a file queued without
its sha256, asks the server where the file stands before any retry (and holds the
next PUT while an abandoned one may still be read: abandoned.py), claims the name,
then sends the PUTs from this worker thread (uploader.py) and settles
the outcome: complete, queued again (backoff, rate limit, a lost session, a failure
shared by every upload: api/troubles.py), or refused with its reason.

A failure shared by every request of its kind (the account, an endpoint's outage, a
wait the server asked for) shows the one reason of its hold on every file it holds;
the file that met it is retried after its own backoff too, the files merely held back
as soon as the hold ends (`own_turn`, for the engine's bring-forward).

The state lock is taken only for short steps between network calls; the
network I/O itself never runs under it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Callable

from ..api.client import ApiClient
from ..api.retry import Backoff
from ..api.troubles import clock_text, is_outage, shared_by_all
from ..config import Settings
from ..errors import (AccountError, Cancelled, ExtensionNotAllowed, FileTooLarge, Fs360Error, HeldBack,
                      InternalError, NotSent, RemoteFileNotFound, SentContentChanged, ServerHoldsOtherFile,
                      SessionNotFound, SessionTooLarge, WaitForRateLimit)
from .abandoned import AbandonedPuts
from .archive_plan import TreeArchive
from .chunk_sizes import ChunkSizes
from .gate import TransferGate
from .locking import StateLock
from .progress import Listeners
from .records import FAILED, PENDING, REJECTED, UPLOADING, FileRecord, SessionRecord, duration_text
from .registry import Registry
from .spool import RunningDigest, SpoolReader
from .uploader import SentFile, file_reader, send_file

log = logging.getLogger(__name__)

# The server's answer to a chunk whose total differs from the file's it holds (api.md Part B).
INVALID_CONTENT_RANGE = "invalid_content_range"
# A file whose upload met an internal error (a bug: logged with its traceback) this many times
# running is tried no more: it is rejected with the reason, and a copy again tries afresh.
MAX_INTERNAL_ERRORS = 3
# A held-back file looks again no sooner than this (a hold's wait may be about to end).
MIN_HELD_WAIT = 0.2


class Transfer:
    def __init__(self, settings: Settings, lock: StateLock, registry: Registry, tree: TreeArchive,
                 client: ApiClient, gate: TransferGate, backoff: Backoff, listeners: Listeners,
                 session_lost: Callable[[SessionRecord, str], None], stopping: Callable[[], bool]):
        self.settings = settings
        self.lock = lock
        self.registry = registry
        self.tree = tree
        self.client = client
        self.gate = gate
        self.backoff = backoff
        self.listeners = listeners
        self.session_lost = session_lost
        self._stopping = stopping
        self.troubles = client.troubles
        self.abandoned = AbandonedPuts(settings.abandoned_upload_quiet)
        self.chunk_sizes = ChunkSizes(settings.chunk_size, settings.max_chunk_size)
        self._session_guards: dict[int, threading.Lock] = {}
        # By session id: the last failure to open its server session, shared by its files until
        # its backoff passed: (the error's words, failures running, monotonic time of the next try).
        self._open_failures: dict[int, tuple[str, int, float]] = {}
        # By file id: internal errors running; and the wall time its own backoff allows its next
        # try (a hold's end brings a file forward no earlier than that).
        self._internal_errors: dict[int, int] = {}
        self._own_turn: dict[int, float] = {}

    # --- one attempt -----------------------------------------------------------------------

    def attempt(self, record: FileRecord, generation: int, buffer) -> None:
        """Sends `record` once; whatever happens, its state is settled (nothing raises but bugs)."""
        session = self.registry.session_of(record)
        upload_id = None
        puts_let_go = 0  # none: the server holds nothing new of the file (forget_unsent_locked)
        try:
            upload_id = self._remote_session(session)
            self._ensure_name_free_on_server(record, generation, session, upload_id)
            self._hash_if_unknown(record, generation, session)
            start = self._resume_offset(record, upload_id)

            def cancelled() -> bool:
                return self._stopping() or record.generation != generation
            # A pause is waited out before the claim: until a PUT may go, a writer may still change it.
            if not self.gate.wait_open(cancelled):
                raise Cancelled()
            with self.lock:
                self._still_picked_locked(record, generation, session)
                self.registry.claim_server_name_locked(record, session, upload_id)
                members = tuple(self.tree.members_locked(session)) if record.archive else None
                sha256 = None if record.archive else record.sha256  # journaled when queued: checked as sent
            # The gate (bwlimit, pause) waits before every PUT, and the bwlimit before each piece of it.
            turns = self.gate.turns(cancelled, lambda nbytes: self.listeners.emit("bytes_sent", file=record,
                                                                                  nbytes=nbytes))

            def should_stop(nbytes: int) -> bool:
                nonlocal puts_let_go
                stop = turns.before_put(nbytes)
                puts_let_go += not stop  # False lets a PUT go
                return stop
            sent = self._send(record, upload_id, start, members, sha256, buffer, should_stop, turns)
            if record.archive and not record.sha256:
                self._record_archive_sha256(record, members, sent.sha256)
        except Cancelled:
            with self.lock:
                if not puts_let_go and upload_id and record.upload_id == upload_id:
                    self.registry.forget_unsent_locked(record, session)
                if record.state == UPLOADING and record.generation == generation:
                    # Shutting down: the journal keeps it queued for the next mount.
                    self.registry.set_state_locked(record, PENDING)
            return
        except WaitForRateLimit as exc:
            # No new session may be opened yet: this worker takes a file of an open session
            # meanwhile, and this one comes back when the budget allows.
            with self.lock:
                self._wait_for_rate_limit_locked(record, generation, exc)
            return
        except HeldBack as exc:
            with self.lock:
                self._held_back_locked(record, generation, exc)
            return
        except SessionNotFound:
            # Only the session this worker talked to is dead; the session may already have a new one
            # (another worker met the 404 first), which must not be dropped.
            if upload_id:
                self.session_lost(session, upload_id)
            with self.lock:
                if record.generation == generation and record.state == UPLOADING:
                    self.registry.requeue_locked(record, PENDING, 0.0, server_received=0, upload_id=None)
            return
        except ServerHoldsOtherFile as exc:
            self._name_taken(record, generation, session, upload_id, exc)
            return
        except Fs360Error as exc:
            if exc.code == INVALID_CONTENT_RANGE and self._another_file_holds_the_name(record, upload_id):
                # Part B's answer when the name holds an unfinished file of another total.
                exc = ServerHoldsOtherFile(f"the server holds an unfinished file of another size named "
                                           f"{record.server_name!r}", status=exc.status)
                self._name_taken(record, generation, session, upload_id, exc)
                return
            with self.lock:
                self._settle_error_locked(record, generation, exc)
            return
        except OSError as exc:
            with self.lock:
                if record.generation == generation:
                    self.registry.set_state_locked(record, REJECTED, last_error=f"cannot read the spooled data: {exc}")
            return
        self._settle_sent(record, generation, session, upload_id, sent)

    def _name_taken(self, record: FileRecord, generation: int, session: SessionRecord, upload_id: str | None,
                    exc: ServerHoldsOtherFile) -> None:
        with self.lock:
            if record.server_received == 0 and upload_id and self.registry.is_current_locked(record, generation):
                # None of our bytes are under that name (the server holds another total there):
                # the file takes the next free name, as if the name had been known taken.
                self.registry.name_held_by_another_locked(record, session, upload_id)
                self.registry.requeue_locked(record, PENDING, 0.0, last_error="")
                log.warning("%s: %s; sending it as %s", record.name, exc, record.server_name)
            else:
                self._settle_error_locked(record, generation, exc)

    def _another_file_holds_the_name(self, record: FileRecord, upload_id: str | None) -> bool:
        """Whether the server holds a file of another total under the name of `record`, none of
        whose bytes it took (asked after a refusal that may mean just that)."""
        if record.server_received or not upload_id:
            return False
        try:
            progress = self.client.file_status(upload_id, record.server_name)
        except Fs360Error:
            return False
        return progress.total != record.size

    def _send(self, record: FileRecord, upload_id: str, start: int, members, sha256: str | None, buffer,
              should_stop, pace):
        # Opened once for the attempt, so a file unlinked meanwhile still reads whole; an archive
        # is read from its members' spool files (by path): no fd of its own.
        spool = None if record.archive else SpoolReader(self.registry.spool, record.id)
        try:
            with file_reader(spool, members, record.size, self.settings.archive_zip64) as read:
                return send_file(self.client, upload_id, record.server_name, read, record.size, start, buffer,
                                 self.chunk_sizes, functools.partial(self._progress, record),
                                 should_stop, expected_sha256=sha256, pace=pace)
        finally:
            pace.flush()
            if spool is not None:
                spool.close()

    def _settle_sent(self, record: FileRecord, generation: int, session: SessionRecord, upload_id: str,
                     sent: SentFile) -> None:
        received = sent.progress.received
        with self.lock:
            if session.upload_id != upload_id and record.generation == generation and not record.unlinked:
                # The session was lost while this file went to it: send it again to the new one.
                self.registry.requeue_locked(record, PENDING, 0.0, server_received=0, upload_id=None)
                return
            # Deleted while its last PUT was under way (and maybe created again identical since), which
            # completed it with the content journaled for it: the server holds it whole.
            after_deletion = session.upload_id == upload_id and self.registry.sent_after_deletion_locked(
                record, generation, upload_id, received, sent.sha256)
            if after_deletion and record.unlinked:
                self._forget_locked(record)
                log.info("%s: deleted while its upload was under way, which completed it: the server holds it "
                         "whole; creating it again with the same content brings it back", record.name)
                return
            if not (after_deletion or self.registry.sent_locked(record, generation, received)):
                return
            self._forget_locked(record)
            if session.project is not None:
                self.registry.nudge()  # its project may be due now (otherwise the next round will do)
        self.listeners.emit("file_complete", file=record)

    def _forget_locked(self, record: FileRecord) -> None:
        self._internal_errors.pop(record.id, None)
        self._own_turn.pop(record.id, None)
        self.abandoned.forget_locked(record.id)

    def _record_archive_sha256(self, record: FileRecord, members, sent_sha256: str | None) -> None:
        """The archive's sha256 for status: of what was sent, or (when this attempt found it
        complete on the server) read once more."""
        try:
            sha256 = sent_sha256 or self.tree.sha256(members)
        except OSError as exc:  # the upload itself is done: only status lacks the sha256
            log.warning("%s: cannot compute the archive's sha256: %s", record.name, exc)
            return
        with self.lock:
            self.registry.set_file_attrs_locked(record, sha256=sha256)

    # --- before the first PUT ----------------------------------------------------------------

    def _remote_session(self, session: SessionRecord) -> str:
        """The session's upload_id, opening one (POST /uploads) when it has none.

        A session is used for as long as the server answers for it, whatever its stated
        expiry (the real server may count that from the last request): it is replaced only
        after a 404 says it is gone (`session_lost`)."""
        with self.lock:
            if session.upload_id:
                return session.upload_id
            guard = self._session_guards.setdefault(session.id, threading.Lock())
        with guard:  # one POST /uploads per session, however many workers get here
            with self.lock:
                if session.upload_id:
                    return session.upload_id
            failed = self._open_failures.get(session.id)
            if failed is not None and time.monotonic() < failed[2]:
                # The folder's last try failed: its other files wait for its next one, not a POST each.
                wait = failed[2] - time.monotonic()
                raise HeldBack(f"opening this folder's upload session failed: {failed[0]}; it is tried again at "
                               f"{clock_text(time.time() + wait)}", retry_after=wait)
            try:
                # Never sleeps on the pacer: out of budget, the file goes back to the queue (see attempt).
                opened = self.client.open_session(wait=False)
            except Fs360Error as exc:
                if not (isinstance(exc, NotSent) or shared_by_all(exc)):  # those are held for every folder
                    count = failed[1] + 1 if failed is not None else 1
                    self._open_failures[session.id] = (str(exc), count,
                                                       time.monotonic() + self.backoff.delay(count, exc))
                raise
            self._open_failures.pop(session.id, None)
            with self.lock:
                self.registry.session_opened_locked(session, opened.upload_id, opened.expires_in_seconds)
            self.listeners.emit("session_opened", session=session)
            return opened.upload_id

    def open_early(self, session: SessionRecord) -> None:
        """Opens the session's server session before any of its files is queued (its first
        uploadable file is being written). Like a file's own opening: one per folder at a time,
        never waiting on the pacer or a hold; whatever fails is left to its files' attempts."""
        with self.lock:
            if session.upload_id or not self.registry.holds_session_locked(session):
                return
        try:
            self._remote_session(session)
        except NotSent:
            pass  # out of budget or held: the file's own attempt waits its turn, and says why
        except Fs360Error as exc:  # held for the folder's files as their own failure would be
            log.info("session %r: opening its upload session failed: %s", session.name, exc)
        except Exception:  # a bug must not kill a worker: the files open it themselves
            log.exception("session %r: opening its upload session failed", session.name)

    def _still_picked_locked(self, record: FileRecord, generation: int, session: SessionRecord) -> None:
        """Before a step that binds the file to `session` (its name there, the claim): a file
        written again, renamed or moved to another session since it was picked up goes again
        from the queue (Cancelled), never into the session it left."""
        if record.generation != generation or self.registry.session_of(record) is not session:
            raise Cancelled()

    def _ensure_name_free_on_server(self, record: FileRecord, generation: int, session: SessionRecord,
                                    upload_id: str) -> None:
        """Before the first PUT of a file, its server name must not hold another file's bytes
        (a resume would merge two files into one): such a name is a conflict, and the file
        takes the next free name instead."""
        with self.lock:
            if self.registry.listing_known_locked(session, upload_id):
                self._name_free_on_server_locked(record, generation, session)
                return
        # A session from the journal: ask once what it holds (one request per session).
        listing = self.client.session_status(upload_id)
        with self.lock:
            self.registry.server_listing_locked(session, upload_id, listing)
            self._name_free_on_server_locked(record, generation, session)

    def _name_free_on_server_locked(self, record: FileRecord, generation: int, session: SessionRecord) -> None:
        self._still_picked_locked(record, generation, session)
        taken_by = self.registry.name_free_on_server_locked(record, session)
        if taken_by:
            log.warning("%s: the server already holds another file named %s; sending it as %s",
                        record.name, taken_by, record.server_name)

    def _hash_if_unknown(self, record: FileRecord, generation: int, session: SessionRecord) -> None:
        """A file queued without its sha256 (not written front to back, and hashing it then would
        have held the state lock) is hashed here, off the lock, before any byte of it is sent."""
        if record.archive or record.sha256 or record.may_be_on_server:
            return
        digest = RunningDigest.of_file(self.registry.spool.path(record.id))
        with self.lock:
            self._still_picked_locked(record, generation, session)
            self.registry.content_hashed_locked(record, digest)

    def _resume_offset(self, record: FileRecord, upload_id: str) -> int:
        """Before any retry the server is asked where the file stands; a first try starts at 0.
        After an abandoned PUT the next one waits until that one is surely over (abandoned.py)."""
        if not (record.needs_resync or record.attempts or record.server_received or record.upload_id):
            return 0
        try:
            progress = self.client.file_status(upload_id, record.server_name)
        except RemoteFileNotFound:
            received = 0
        else:
            if progress.total != record.size and progress.received > 0:
                raise ServerHoldsOtherFile(
                    f"the server already holds a different file named {record.server_name!r}", status=409)
            received = progress.received
        if received > record.server_received:
            self.troubles.done_unanswered("put_file")  # a PUT of it went through, unanswered
        with self.lock:
            self.abandoned.check_locked(record.id, received)
            self.registry.resynced_locked(record, received)
        return received

    # --- progress and outcomes ---------------------------------------------------------------

    def _progress(self, record: FileRecord, received: int, acknowledged: bool) -> None:
        with self.lock:
            journal_now = self.registry.progress_locked(record, received)
        if journal_now:
            self.registry.journal_progress(record, received)
        self.listeners.emit("chunk_acknowledged" if acknowledged else "chunk_refused", file=record,
                            received=received)

    def _settle_error_locked(self, record: FileRecord, generation: int, exc: Fs360Error) -> None:
        if record.generation != generation:
            return
        if getattr(exc, "gave_up_on_upload", False):
            self.abandoned.note_locked(record.id, record.server_received)
        if exc.retryable or isinstance(exc, AccountError):
            self.retry_later_locked(record, generation, exc)
            return
        self._learn_from_refusal_locked(exc)
        # Refused outright: unless earlier chunks got through, the server holds nothing of it.
        upload_id = record.upload_id if record.server_received else None
        self.registry.set_state_locked(record, REJECTED, last_error=str(exc), upload_id=upload_id)
        self.listeners.emit("file_rejected", file=record, error=exc)
        if isinstance(exc, SentContentChanged):  # not the server's doing: a changed spool, or a bug
            log.error("%s: %s", record.name, exc)
        else:
            log.warning("%s: refused by the server: %s", record.name, exc)

    def _learn_from_refusal_locked(self, exc: Fs360Error) -> None:
        """A refusal that states the server's cap or extensions: later files are checked against it."""
        registry = self.registry
        if isinstance(exc, FileTooLarge) and isinstance(exc.fields.get("limit"), int):
            registry.learn_locked(file_cap=exc.fields["limit"])
        elif isinstance(exc, SessionTooLarge) and isinstance(exc.fields.get("limit"), int):
            registry.learn_locked(session_cap=exc.fields["limit"])
        elif isinstance(exc, ExtensionNotAllowed):
            allowed = exc.fields.get("allowed")
            refused = exc.fields.get("extension")
            changes = {}
            if isinstance(allowed, list) and all(isinstance(a, str) for a in allowed):
                changes["allowed_extensions"] = tuple(a.lower().lstrip(".") for a in allowed)
            if isinstance(refused, str):
                changes["refused_extensions"] = tuple(sorted(set(registry.caps.refused_extensions)
                                                             | {refused.lower()}))
            registry.learn_locked(**changes)

    def _wait_for_rate_limit_locked(self, record: FileRecord, generation: int, exc: WaitForRateLimit) -> None:
        if not self.registry.is_current_locked(record, generation):
            return
        self.registry.requeue_locked(record, PENDING, exc.retry_after, next_attempt=time.time() + exc.retry_after,
                                     last_error=f"waiting for the server's rate limit: the next new session "
                                                f"in {duration_text(exc.retry_after)}")

    def _held_back_locked(self, record: FileRecord, generation: int, exc: HeldBack) -> None:
        """Not sent: a failure shared by its kind of request, its folder's failed opening, or an
        abandoned PUT of it holds it. It shows that reason and looks again when told, or when the
        hold ends (brought forward); no attempt of its own is counted."""
        if not self.registry.is_current_locked(record, generation):
            return
        # Its hold may have ended (and what waited been brought forward) since it was raised.
        delay = MIN_HELD_WAIT if self.troubles.ended_since(exc) else max(exc.retry_after, MIN_HELD_WAIT)
        self.registry.requeue_locked(record, FAILED, delay, last_error=str(exc), next_attempt=time.time() + delay)

    def retry_later_locked(self, record: FileRecord, generation: int, exc: Fs360Error) -> None:
        if not self.registry.is_current_locked(record, generation):
            return
        attempts = record.attempts + 1
        delay = self.backoff.delay(attempts, exc)
        reason = str(exc)
        held = self.troubles.held_reason(exc.endpoint) if exc.endpoint and shared_by_all(exc) else None
        if held is not None:
            # Not this file's alone: it shows the one reason of the hold, as every file it holds does.
            reason = held[0]
            if is_outage(exc):  # its own failure counts too: it goes no sooner than its own backoff
                self._own_turn[record.id] = time.time() + delay
            if isinstance(exc, AccountError):
                delay = held[1]  # the account's probe decides, not this file's backoff
            else:
                delay = max(delay, held[1])
        self.registry.requeue_locked(record, FAILED, delay, resync=True, attempts=attempts, last_error=reason,
                                     next_attempt=time.time() + delay)
        self.listeners.emit("file_failed", file=record, error=exc, retry_in=delay)
        log.info("%s: %s; retry %d in %.1f s", record.name, exc, attempts, delay)

    def own_turn(self, record: FileRecord) -> float:
        """The wall time from which the file's own backoff lets it go (0: at once)."""
        return self._own_turn.get(record.id, 0.0)

    def internal_error_locked(self, record: FileRecord, generation: int, exc: BaseException) -> None:
        """An upload ended in a bug (already logged with its traceback): tried again, but not for
        ever; the server may hold part of the file then, so its next PUT waits as after a stall."""
        if not self.registry.is_current_locked(record, generation):
            return
        if record.may_be_on_server:
            self.abandoned.note_locked(record.id, record.server_received)
        count = self._internal_errors[record.id] = self._internal_errors.get(record.id, 0) + 1
        if count < MAX_INTERNAL_ERRORS:
            self.retry_later_locked(record, generation, InternalError(f"internal error (see the log): {exc}"))
            return
        self._forget_locked(record)
        upload_id = record.upload_id if record.server_received else None
        self.registry.set_state_locked(
            record, REJECTED, upload_id=upload_id,
            last_error=f"fs360 failed {count} times on this file with an internal error ({exc}; its traceback is "
                       f"in the log: please report it): not tried again; copy the file again to try once more")
        log.error("%s: not tried again after %d internal errors", record.name, count)
