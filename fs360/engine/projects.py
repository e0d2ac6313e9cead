"""Project requests: wait for every file, POST /projects once, poll to 100; and the
daily look at each unfinished session.

Runs on the engine's housekeeping thread. Polls are paced by the client's pacer, and
each poll sets when its project is asked next (`next_attempt`), so that no project is
asked more often than the poll interval, however many status reads there are. A project
is polled at that interval for its first 15 minutes, then every few minutes (the
vendor's client gives up after 15 minutes); a project the server deleted (`deleted:
true`, or a 404) is no longer polled.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from ..api.client import ApiClient, Project
from ..api.troubles import shared_by_all
from ..api.retry import Backoff
from ..config import Settings
from ..errors import (AccountError, ApiError, Fs360Error, NotSent, ProjectCreationFailed,
                      SessionNotFound, WaitForRateLimit)
from .locking import StateLock
from .progress import Listeners
from .records import (COMPLETE, HELD, IN_TREE, INTERRUPTED, LOST, P_CREATED, P_FAILED, P_READY, P_WAITING, REJECTED,
                      ProjectRequest, SessionRecord, duration_text)
from .registry import Registry

log = logging.getLogger(__name__)

# The API is served under {server}/api/v1 and a project's page is {server}/projects/{name}
# (api.md Part C; self-hosted servers exist, so the server is the one --api-url names).
API_PATH_SUFFIX = "/api/v1"
# A project is polled at the poll interval this long after its first poll, then every SLOW_POLL.
FAST_POLLING_SECONDS = 15 * 60.0
SLOW_POLL_SECONDS = 5 * 60.0
# Each unfinished session is looked at once at mount and then this often: the look keeps an idle
# session alive (its expiry may count from the last request) and finds one the server lost.
SESSION_CHECK_SECONDS = 24 * 3600.0
SESSION_CHECK_RETRY_SECONDS = 5 * 60.0
# When the list from before the POST is not known (the server gave none then), a project listed
# with our title counts as the one a lost POST made only if it was created after that POST, less
# this for the two clocks.
CLOCK_SLACK_SECONDS = 300.0


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
        self._poll_interval = max(settings.project_poll_interval, 0.01)
        # Memory only, by session id: when its project was first polled (monotonic); by (session
        # id, upload_id): when that server session is looked at next (monotonic).
        self._polling_since: dict[int, float] = {}
        self._next_session_check: dict[tuple[int, str], float] = {}
        # After a look that got no answer, none is tried before this (monotonic): a server that
        # does not answer must not hold housekeeping for one request deadline per session.
        self._sessions_checkable_at = 0.0
        self._no_project_list = False  # the server answered GET /projects with a 4xx: it has none

    def request_locked(self, session: SessionRecord, options: dict, marker: bytes | None = None,
                       marker_mtime_ns: int | None = None) -> None:
        self.registry.set_project_locked(session, ProjectRequest(options=options, marker=marker,
                                                                 marker_mtime_ns=marker_mtime_ns))

    def cancel_locked(self, session: SessionRecord) -> bool:
        """unlink .create: possible until the POST is sent (or after the server refused it). Once
        it may have been sent, the request stays: the project may exist already, and a new
        request or a DELETE of the session would make a second one or discard it."""
        project = session.project
        if project is None:
            return True
        if project.state in (P_CREATED, P_READY) or session.project_posted:
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
        blocked = [f for f in files if f.state in (REJECTED, LOST, INTERRUPTED, HELD)]
        stuck = [f for f in blocked if f.state == REJECTED and f.server_received > 0]
        if stuck:
            # The server keeps part of a file it will not finish, and cannot drop one file: a
            # project of this session would be refused whatever happens here.
            names = ", ".join(f.name for f in stuck[:3]) + (", …" if len(stuck) > 3 else "")
            return (f"the server holds part of {names}, refused before it was whole, and cannot drop it: no "
                    f"project can be made from this folder; copy the other files into a new folder")
        if blocked:
            # One short line (each file's own reason is in status): which files, and what undoes them.
            # The archive is no file of the folder: what undoes it is `rm .create` (it unfreezes the tree).
            names = ", ".join(f.name for f in blocked[:3]) + (", …" if len(blocked) > 3 else "")
            todo = ("remove .create, change the tree, then write .create again" if any(f.archive for f in blocked)
                    else "delete them (or copy them again) to go on")
            return (f"{len(blocked)} file(s) will not reach the server ({names}; the reasons: fs360 status "
                    f"--files): {todo}")
        # A deleted file written again is listed as the server's while the writer's copy is compared:
        # known good (or refused and deleted again) only at its close.
        comparing = [f.name for f in files + session.tree_files() if self.registry.being_revived_locked(f)]
        if comparing:
            return (f"waiting for {', '.join(sorted(comparing))} (deleted, then created again) to be closed: "
                    f"only then is it known to be the server's file")
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
                if project.last_error and project.state != P_FAILED and \
                        self.client.troubles.is_past(project.last_error):
                    # The account fixed, an outage over: its reason is no longer why the project
                    # waits (a file deleted meanwhile may keep it waiting, with a reason of its own).
                    self.registry.update_project_locked(session, last_error="")
                if project.state == P_WAITING:
                    # A POST that may have gone is looked up whatever changed here since: the
                    # project may exist, and nothing here can change it now.
                    posted = session.project_posted
                    self.registry.project_notice_locked(session, "" if posted else self.blocking_reason_locked(session))
                    if not session.notice and project.next_attempt <= now:
                        due_create.append(session)
                elif project.state == P_CREATED and project.next_attempt <= now:
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
            created, listed_now = self._find_existing(session, upload_id, body.get("title")) if posted_before \
                else (None, None)
        except Fs360Error as exc:
            # Whether the lost POST made a project is not known yet: nothing is sent until it is.
            self._retry_later(session, exc)
            return
        try:
            if created is None:
                # What is listed now is not ours: a lost answer's project will be a new one (the
                # lookup just made has the list: not asked twice).
                listed_before = listed_now if listed_now is not None else \
                    self._listed_names() if upload_id else None
                with self.lock:
                    if session.project is not project:
                        return
                    if upload_id:
                        # Journaled before sending, so the project is created once whatever happens
                        # next, and after a restart an older project of this title is never taken.
                        self.registry.update_project_locked(
                            session, posted_upload_id=upload_id, posted_at=time.time(),
                            listed_before=None if listed_before is None else sorted(listed_before))
                created = self.client.create_project(body, wait=False)
        except SessionNotFound:
            if upload_id:
                self.session_lost(session, upload_id)
            return
        except (ProjectCreationFailed, AccountError, NotSent) as exc:
            # Not created (refused, or not sent at all), so the next try needs no lookup first.
            with self.lock:
                if session.project is project and upload_id and project.posted_upload_id == upload_id:
                    self.registry.update_project_locked(session, posted_upload_id=None)
            if isinstance(exc, ProjectCreationFailed):
                strangers = self._recheck_files(session, upload_id)
                if strangers:
                    exc = ProjectCreationFailed(
                        f"the server refuses the project: it holds an unfinished file this mount does not know "
                        f"({', '.join(strangers[:3])}{', …' if len(strangers) > 3 else ''}), left by another client "
                        f"or a cache disk that failed, and cannot drop one file: copy the files into a new folder",
                        status=400, code=exc.code)
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

    def _find_existing(self, session: SessionRecord, upload_id: str, title) -> tuple[Project | None, set | None]:
        """After a POST whose answer was lost, the project it made, if any: never a second POST for
        one that exists. The key's list of projects (api.md Part C) decides: the entry of this
        session, else the one named after it, else the newest of this title made since the POST
        (a renamed project). A server without the list is asked for the project named after the
        session, its usual name. A failure to ask is raised: no POST while it is not known. Also
        returns the names the list holds now (None without one)."""
        listed = None
        try:
            listed = None if self._no_project_list else self.client.list_projects()
        except ApiError as exc:
            # Only a refusal of the request says the server has no list (404, 405); an answer that
            # could not be read (MalformedResponse, raised on) says nothing yet: asked again later.
            if isinstance(exc, AccountError):
                raise
            self._no_project_list = True
        if listed is None:
            try:  # no list on this server (405, 404): the usual name
                return self.client.project_status(upload_id), None
            except ApiError as missing:
                if isinstance(missing, AccountError):
                    raise
                return None, None
        names = _names_of(listed)
        with self.lock:
            claimed = {s.project.name for s in self.registry.sessions.values()
                       if s is not session and s.project is not None and s.project.name}
        entries = [p for p in listed if isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"]
                   and p["name"] not in claimed and p.get("deleted") is not True]
        mine = [p for p in entries if p.get("upload_id") == upload_id] or \
            [p for p in entries if p["name"] == upload_id]
        if not mine and isinstance(title, str):
            mine = sorted((p for p in entries if p.get("title") == title and self._new_since_post(session, p)),
                          key=lambda p: _created_at(p) or 0.0)
        if not mine:
            return None, names
        found = mine[-1]
        status = found.get("status")
        whole = isinstance(status, (int, float)) and not isinstance(status, bool) and 0 <= status <= 100
        log.info("session %r: the project of the lost POST is %s", session.name, found["name"])
        return Project(found["name"], int(status) if whole else 0, {}), names

    @staticmethod
    def _new_since_post(session: SessionRecord, entry: dict) -> bool:
        """Whether a listed project may be the one this session's last POST made: not listed just
        before it; or, when that list is not known, created since it (the journal keeps both). A
        project that cannot be shown to be new is never taken: it may be an older one of the
        same title, and the folder would be sealed into it."""
        project = session.project
        if project is None:
            return False
        if project.listed_before is not None:
            return entry["name"] not in project.listed_before
        created_at = _created_at(entry)
        return project.posted_at is not None and created_at is not None and \
            created_at >= project.posted_at - CLOCK_SLACK_SECONDS

    def _listed_names(self) -> set[str] | None:
        """The names of the key's projects now; None on a server without the list, or no answer."""
        if self._no_project_list:
            return None
        try:
            listed = self.client.list_projects()
        except ApiError as exc:
            self._no_project_list = not isinstance(exc, AccountError)
            return None
        except Fs360Error:  # no answer, or one that could not be read: unknown this time
            return None
        return _names_of(listed)

    def _recheck_files(self, session: SessionRecord, upload_id: str | None) -> list[str]:
        """The server says a file is incomplete: believe it and send that file again. Returns the
        names of the unfinished files it holds that no file here is sent as."""
        if not upload_id:
            return []
        try:
            remote = {f.name.lower(): f for f in self.client.session_status(upload_id)}
        except Fs360Error:
            return []
        with self.lock:
            ours = set()
            for record in session.uploads():
                ours.add((record.server_name or "").lower())
                if record.state != COMPLETE:
                    continue
                held = remote.get((record.server_name or "").lower())
                if held is None or not held.complete:
                    self.registry.server_lacks_file_locked(record)
        return sorted(f.name for key, f in remote.items() if not f.complete and key not in ours)

    def _poll(self, session: SessionRecord) -> None:
        project = session.project
        if project is None or project.name is None:
            return
        first_poll = self._polling_since.setdefault(session.id, time.monotonic())
        try:
            result = self.client.project_status(project.name)
        except ApiError as exc:
            if exc.status == 404 and not isinstance(exc, AccountError):
                self._gone(session, project, f"the server no longer has project {project.name} (HTTP 404 "
                                             f"{exc.code}): it was deleted")
            else:
                self._retry_later(session, exc)
            return
        except Fs360Error as exc:
            self._retry_later(session, exc)
            return
        if result.record.get("deleted") is True:
            self._gone(session, project, f"the server deleted project {project.name} at {result.status}%, "
                                         f"before it was ready")
            return
        # After the first quarter of an hour, a project still processing is asked every few minutes.
        slow = time.monotonic() - first_poll >= FAST_POLLING_SECONDS
        with self.lock:
            if session.project is not project:
                return
            if result.status >= 100:
                self.registry.update_project_locked(session, state=P_READY, status=100, record=result.record,
                                                    last_error="", attempts=0)
            else:
                next_poll = SLOW_POLL_SECONDS if slow else self._poll_interval
                self.registry.update_project_locked(session, status=result.status, last_error="", attempts=0,
                                                    next_attempt=time.time() + next_poll)
        self.listeners.emit("project_status", session=session, status=result.status)

    def _gone(self, session: SessionRecord, project, reason: str) -> None:
        """The server deleted the project: never polled again, the reason shown in status."""
        with self.lock:
            if session.project is project:
                self.registry.update_project_locked(session, state=P_FAILED, last_error=reason)
        log.warning("session %r: %s", session.name, reason)

    # --- the daily look at each unfinished session -----------------------------------------

    def check_sessions(self) -> None:
        """One GET /uploads/{id} for each unfinished session, at mount and then daily: it keeps an
        idle session alive and finds one the server lost early (its files go again from the
        spool, or are `lost` with the reason), not only when .create is refused."""
        now = time.monotonic()
        if now < self._sessions_checkable_at:
            return
        with self.lock:
            due = []
            for session in self.registry.sessions.values():
                if not session.upload_id or session.sealed:
                    continue
                key = (session.id, session.upload_id)
                if key not in self._next_session_check:
                    # Now for a session from the journal nothing has asked the server about yet
                    # (its listing unknown); a day on for one opened, or asked about, meanwhile.
                    self._next_session_check[key] = now if not session.listing_known \
                        else now + SESSION_CHECK_SECONDS
                if self._next_session_check[key] <= now:
                    due.append((session, session.upload_id))
        for session, upload_id in due:
            try:
                self.client.session_status(upload_id, wait=False)
            except SessionNotFound:
                self.session_lost(session, upload_id)
            except Fs360Error as exc:
                log.info("session %r: could not look at its server session: %s", session.name, exc)
                if not isinstance(exc, ApiError) or isinstance(exc, AccountError):
                    # No answer, the account, or the rate budget: the other sessions wait too.
                    wait = exc.retry_after if isinstance(exc, NotSent) and exc.retry_after else \
                        SESSION_CHECK_RETRY_SECONDS
                    self._sessions_checkable_at = time.monotonic() + wait
                    return
            self._next_session_check[(session.id, upload_id)] = time.monotonic() + SESSION_CHECK_SECONDS

    def _retry_later(self, session: SessionRecord, exc: Fs360Error) -> None:
        """The next try after a backoff; a request not sent (the rate budget, or a failure shared
        by every request of its kind: api/troubles.py) goes when it may, with no attempt counted."""
        with self.lock:
            project = session.project
            if project is None:
                return
            attempts = project.attempts
            if isinstance(exc, NotSent):
                delay = exc.retry_after
                last_error = (f"waiting for the server's rate limit: the project is requested in "
                              f"{duration_text(delay)}" if isinstance(exc, WaitForRateLimit) else str(exc))
            else:
                attempts += 1
                delay = self.backoff.delay(attempts, exc)
                last_error = str(exc)
            held = self.client.troubles.held_reason(exc.endpoint) if exc.endpoint and shared_by_all(exc) else None
            if held is not None:
                last_error = held[0]  # the one reason of the hold, as its files show it (step() clears it)
            self.registry.update_project_locked(session, attempts=attempts, last_error=last_error,
                                                next_attempt=time.time() + delay)

    def _fail(self, session: SessionRecord, exc: Fs360Error) -> None:
        with self.lock:
            project = session.project
            if project is None:
                return
            self.registry.update_project_locked(session, state=P_FAILED,
                                                last_error=f"the server refused to make the project: {exc}")
        log.warning("session %r: project creation refused: %s", session.name, exc)


def _names_of(listed: list) -> set[str]:
    """The names in an answer to GET /projects (entries that are not objects with a name: none)."""
    return {p["name"] for p in listed if isinstance(p, dict) and isinstance(p.get("name"), str)}


def _created_at(entry: dict) -> float | None:
    """A listed project's creation time (epoch seconds), if it says one fs360 can read."""
    created = entry.get("created")
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() if isinstance(created, str) \
            else None
    except ValueError:
        return None


def project_page(api_url: str, name: str) -> str:
    """The project's page on the server that `api_url` points at."""
    parts = urlsplit(api_url)
    path = parts.path.rstrip("/")
    server_path = path[: -len(API_PATH_SUFFIX)] if path.endswith(API_PATH_SUFFIX) else ""
    return urlunsplit((parts.scheme, parts.netloc, f"{server_path}/projects/{name}", "", ""))

