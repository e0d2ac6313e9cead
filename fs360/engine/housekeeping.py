"""Housekeeping: everything the engine does in the background besides sending files.

One thread: the account's probe while the server refuses it (api/troubles.py),
project requests (POST once, poll to 100), a daily look at each
unfinished session (projects.py), spool eviction, the
journal's reserve, write-behind and WAL checkpoints; plus short-lived threads
that delete dead server sessions. It wakes every half second, or at once when the
registry nudges it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..api.client import ApiClient
from ..api.retry import Backoff
from ..errors import Fs360Error, HeldBack, JournalClosed
from .journal import Journal
from .locking import StateLock
from .projects import ProjectKeeper
from .registry import Registry
from .spool import Spool

log = logging.getLogger(__name__)

# Seconds between housekeeping rounds when nothing nudges it.
ROUND_SECONDS = 0.5
# Seconds between WAL checkpoints (sqlite's own, at commit time, would run under the state lock).
CHECKPOINT_SECONDS = 5.0
DELETE_SESSION_ATTEMPTS = 5
# Seconds between looks at a hold that keeps a discarded session's DELETE from being sent (bounds).
HELD_DELETE_RECHECK = (0.5, 30.0)


class Housekeeping:
    def __init__(self, lock: StateLock, registry: Registry, journal: Journal, spool: Spool, client: ApiClient,
                 backoff: Backoff, projects: ProjectKeeper, stopping: Callable[[], bool]):
        self.lock = lock
        self.registry = registry
        self.journal = journal
        self.spool = spool
        self.client = client
        self.backoff = backoff
        self.projects = projects
        self._stopping = stopping
        self.wakeup = threading.Condition(lock)
        self._checkpointed_at = time.monotonic()

    def nudge_locked(self) -> None:
        self.wakeup.notify_all()

    def loop(self) -> None:
        while True:
            with self.lock:
                if self._stopping():
                    return
                self.wakeup.wait(ROUND_SECONDS)
                if self._stopping():
                    return
            try:
                self.round()
            except JournalClosed:
                # stop() waited for this round no longer (a slow server) and closed the journal: the
                # next mount asks the server where each session stands, as the upload workers do.
                log.info("the mount stopped during a housekeeping round: the next mount takes it up")
                return
            except Exception:
                log.exception("unexpected error in housekeeping")

    def round(self) -> None:
        self.check_account()
        self.projects.step()
        self.projects.check_sessions()
        self.evict_if_needed()
        self.journal.restore_reserve()
        with self.lock:
            self.registry.write_touches_locked()
        if time.monotonic() - self._checkpointed_at >= CHECKPOINT_SECONDS:
            self._checkpointed_at = time.monotonic()
            self.journal.checkpoint()

    def check_account(self) -> None:
        """While the server refuses the account, its one probe request, when it is due (backed
        off; `fs360 resume` makes it due at once). Its outcome goes to the client's troubles, which
        end the hold when it passes."""
        if not self.client.troubles.account_probe_due():
            return
        try:
            self.client.check_account()
        except Fs360Error as exc:
            log.info("the account is still refused: %s", exc)

    def evict_if_needed(self) -> int:
        """Frees spool space: complete files' data goes, oldest first; unsent data never does."""
        need = self.spool.bytes_to_free()
        if need <= 0:
            return 0
        freed = 0
        with self.lock:
            for record in self.registry.eviction_candidates_locked():
                if freed >= need:
                    break
                self.registry.drop_spool_locked(record)
                freed += record.size
        return freed

    def delete_remote_session_later(self, upload_id: str) -> None:
        threading.Thread(target=self._delete_remote_session, args=(upload_id,), daemon=True,
                         name="fs360-delete-session").start()

    def _delete_remote_session(self, upload_id: str) -> None:
        attempt = 0
        while attempt < DELETE_SESSION_ATTEMPTS and not self._stopping():
            try:
                self.client.delete_session(upload_id)
                return
            except HeldBack as exc:
                # Not sent (an account refusal holds every request, say): no attempt spent; the
                # DELETE goes once the hold ends, for as long as the mount runs.
                time.sleep(min(max(exc.retry_after, HELD_DELETE_RECHECK[0]), HELD_DELETE_RECHECK[1]))
            except Fs360Error as exc:
                if not exc.retryable:
                    log.warning("could not delete server session: %s", exc)
                    return
                attempt += 1
                time.sleep(self.backoff.delay(attempt, exc))
        if attempt >= DELETE_SESSION_ATTEMPTS:
            log.warning("gave up deleting a server session; it expires by itself")
        else:
            log.info("unmounted before a discarded folder's server session could be deleted; it expires by itself")
