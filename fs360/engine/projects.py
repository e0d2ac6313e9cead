"""Project requests: wait for every file, POST /projects once, poll to 100.

Runs on the engine's housekeeping thread. Polls are paced by the client's
pacer and cached (cachetools) so that no project is asked more often than the
poll interval, however many status reads there are.
"""

from __future__ import annotations

import logging
import time
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from cachetools import TTLCache

from ..api.client import ApiClient
from ..api.retry import Backoff
from ..config import Settings
from ..errors import AccountError, ApiError, Fs360Error, ProjectCreationFailed, SessionNotFound, WaitForRateLimit
from .locking import StateLock
from .progress import Listeners
from .records import (COMPLETE, IN_TREE, INTERRUPTED, LOST, P_CREATED, P_FAILED, P_READY, P_WAITING, REJECTED,
                      ProjectRequest, SessionRecord, duration_text)
from .registry import Registry

log = logging.getLogger(__name__)

# The API is served under {server}/api/v1 and a project's page is {server}/projects/{name}
# (api.md Part C; self-hosted servers exist, so the server is the one --api-url names).
API_PATH_SUFFIX = "/api/v1"


class ProjectKeeper:
    def __init__(self, settings: Settings, lock: StateLock, registry: Registry, client: ApiClient,
                 backoff: Backoff, listeners: Listeners, session_lost: Callable[[SessionRecord, str], None]):
        self.settings = settings
        self.lock = lock
        self.registry = registry
        self.client = client
        self.backoff = backoff
        self.listeners = listeners
        self.session_lost = session_lost
        interval = max(settings.project_poll_interval, 0.01)
        self._recent_polls: TTLCache = TTLCache(maxsize=4096, ttl=interval)

    def request_locked(self, session: SessionRecord, options: dict) -> None:
        self.registry.set_project_locked(session, ProjectRequest(options=options))

    def cancel_locked(self, session: SessionRecord) -> bool:
        """unlink .create: possible until the POST is sent."""
        project = session.project
        if project is None:
            return True
        if project.state in (P_CREATED, P_READY):
            return False
        self.registry.set_project_locked(session, None)
        return True

    def blocking_reason_locked(self, session: SessionRecord) -> str:
        """Why the project cannot be created yet ('' when it can)."""
        project = session.project
        if project is not None and "download_link" in project.options:
            return ""
        if session.unlinked:
            names = ", ".join(sorted(f.name for f in session.unlinked))
            return (f"the server holds files deleted from this folder ({names}) and cannot drop one file: "
                    f"remove the folder to discard the whole session")
        files = session.uploads()
        if not files:
            return "no files to make a project of yet"
        blocked = [f for f in files if f.state in (REJECTED, LOST, INTERRUPTED)]
        if blocked:
            # One short line (each file's own reason is in status): which files, and what undoes them.
            # The archive is no file of the folder: what undoes it is `rm .create` (it unfreezes the tree).
            names = ", ".join(f.name for f in blocked[:3]) + (", …" if len(blocked) > 3 else "")
            todo = ("remove .create, change the tree, then write .create again" if any(f.archive for f in blocked)
                    else "delete them (or copy them again) to go on")
            return (f"{len(blocked)} file(s) will not reach the server ({names}; the reasons: fs360 status "
                    f"--files): {todo}")
        waiting = [f for f in files if f.state != COMPLETE]
        if waiting:
            return f"waiting for {len(waiting)} file(s) to finish uploading"
        return ""

    def step(self) -> None:
        with self.lock:
            due_create, due_poll = [], []
            now = time.time()
            for session in list(self.registry.sessions.values()):
                project = session.project
                if project is None:
                    continue
                if project.state == P_WAITING:
                    session.notice = self.blocking_reason_locked(session)
                    if not session.notice and project.next_attempt <= now:
                        due_create.append(session)
                elif project.state == P_CREATED and project.name not in self._recent_polls \
                        and project.next_attempt <= now:
                    due_poll.append(session)
        for session in due_create:
            self._create(session)
        for session in due_poll:
            self._poll(session)

    def _create(self, session: SessionRecord) -> None:
        with self.lock:
            project = session.project
            if project is None or project.state != P_WAITING:
                return
            body = {"title": session.name, "privacy_mode": self.settings.default_privacy, **project.options}
            if "download_link" not in project.options:
                body["upload_id"] = session.upload_id
                if not session.upload_id:
                    return
            upload_id = session.upload_id
            posted_before = upload_id is not None and project.posted_upload_id == upload_id
        try:
            created = self._find_existing(upload_id) if posted_before else None
            if created is None:
                with self.lock:
                    if session.project is not project:
                        return
                    if upload_id and not posted_before:
                        # Journaled before sending, so the project is created once whatever happens next.
                        self.registry.update_project_locked(session, posted_upload_id=upload_id)
                created = self.client.create_project(body, wait=False)
        except SessionNotFound:
            if upload_id:
                self.session_lost(session, upload_id)
            return
        except (ProjectCreationFailed, AccountError, WaitForRateLimit) as exc:
            # Not created (refused, or not sent at all), so the next try needs no lookup first.
            with self.lock:
                if session.project is project and upload_id and project.posted_upload_id == upload_id:
                    self.registry.update_project_locked(session, posted_upload_id=None)
            if isinstance(exc, ProjectCreationFailed):
                self._recheck_files(session, upload_id)
            # An account error (a plan's project limit, a quota, a key) can be fixed without a new
            # .create: retried slowly, like the files; a rate-limit wait comes back when it ends.
            self._retry_later(session, exc)
            return
        except Fs360Error as exc:
            if exc.retryable:
                self._retry_later(session, exc)
            else:
                self._fail(session, exc)
            return
        with self.lock:
            if session.project is not project:
                return
            self.registry.update_project_locked(session, state=P_CREATED, name=created.name,
                                                status=created.status, last_error="", attempts=0)
            self.registry.seal_locked(session)
            # The project holds the data now (the tree's inside the archive): the spool can let it go.
            for record in session.uploads() + session.tree_files():
                if record.state in (COMPLETE, IN_TREE) and not record.evicted and not record.archive:
                    self.registry.drop_spool_locked(record)
        self.listeners.emit("project_created", session=session)
        log.info("session %r: project %s created", session.name, created.name)

    def _find_existing(self, upload_id: str):
        """After a POST whose answer was lost: the project is usually named after the session."""
        try:
            return self.client.project_status(upload_id)
        except ApiError:
            return None

    def _recheck_files(self, session: SessionRecord, upload_id: str | None) -> None:
        """The server says a file is incomplete: believe it and send that file again."""
        if not upload_id:
            return
        try:
            remote = {f.name.lower(): f for f in self.client.session_status(upload_id)}
        except Fs360Error:
            return
        with self.lock:
            for record in session.uploads():
                if record.state != COMPLETE:
                    continue
                held = remote.get((record.server_name or "").lower())
                if held is None or not held.complete:
                    self.registry.server_lacks_file_locked(record)

    def _poll(self, session: SessionRecord) -> None:
        project = session.project
        if project is None or project.name is None:
            return
        try:
            result = self.client.project_status(project.name)
        except Fs360Error as exc:
            self._retry_later(session, exc)
            return
        self._recent_polls[project.name] = result.status
        with self.lock:
            if session.project is not project:
                return
            if result.status >= 100:
                self.registry.update_project_locked(session, state=P_READY, status=100, record=result.record,
                                                    last_error="", attempts=0)
            else:
                self.registry.update_project_locked(session, status=result.status, last_error="", attempts=0)
        self.listeners.emit("project_status", session=session, status=result.status)

    def _retry_later(self, session: SessionRecord, exc: Fs360Error) -> None:
        """The next try after a backoff; a POST held back by the rate limit (never sent) goes
        when the budget allows, with no attempt counted."""
        with self.lock:
            project = session.project
            if project is None:
                return
            attempts = project.attempts
            if isinstance(exc, WaitForRateLimit):
                delay = exc.retry_after
                last_error = (f"waiting for the server's rate limit: the project is requested in "
                              f"{duration_text(delay)}")
            else:
                attempts += 1
                delay = self.backoff.delay(attempts, exc)
                last_error = str(exc)
            self.registry.update_project_locked(session, attempts=attempts, last_error=last_error,
                                                next_attempt=time.time() + delay)

    def _fail(self, session: SessionRecord, exc: Fs360Error) -> None:
        with self.lock:
            project = session.project
            if project is None:
                return
            self.registry.update_project_locked(session, state=P_FAILED, last_error=str(exc))
        log.warning("session %r: project creation refused: %s", session.name, exc)


def project_page(api_url: str, name: str) -> str:
    """The project's page on the server that `api_url` points at."""
    parts = urlsplit(api_url)
    path = parts.path.rstrip("/")
    server_path = path[: -len(API_PATH_SUFFIX)] if path.endswith(API_PATH_SUFFIX) else ""
    return urlunsplit((parts.scheme, parts.netloc, f"{server_path}/projects/{name}", "", ""))

