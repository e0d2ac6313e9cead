"""Failures shared by every request of a kind, held once for the mount.

A refused account, an endpoint that fails or does not answer, or a wait the server
asked for (429 with `Retry-After`) is nobody's file's fault: every request it concerns
would meet it too. So it is held here, and a request it concerns is not sent: `admit`
raises `HeldBack` with the one reason every held file shows, until one probe request
(backed off) says the trouble is over:

  the account   a 401, 402 or 403 on any endpoint holds every endpoint. Its probe is
                one cheap request (`ApiClient.check_account`, run by the engine). When
                it passes, the endpoint that was refused first sends one request of its
                own (a trial: a quota may refuse uploads only) before the others go.
  circuits      one per endpoint class (the pacer's endpoints): a 5xx, no answer, or a
                429 that does not say how long opens it; while it is open nothing of
                that class is sent; once its wait is over one request goes (the probe);
                the first answer closes it, a failure opens it again for longer; so does
                a request whose answer was lost, found done later (`done_unanswered`).
  server waits  a 429 with `Retry-After` holds that class until then (capped at an hour
                by the client), then one probe, as for a circuit.

`resume()` (`fs360 resume`) ends every wait at once. Whoever waits (the engine's queue)
is told when a hold ends (`on_clear`), to bring its waiting retries forward.

Only the mechanism and the words live here; the client reports each request's outcome,
the engine settles files. A leaf lock: nothing else is taken while it is held.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import AccountError, Fs360Error, HeldBack, NotSent, RateLimited, WaitForRateLimit
from .pacing import PACED_WITH
from .retry import Backoff

# What each endpoint class is, in the words of a file's status.
CLASS_WORDS = {
    "open_session": "new upload sessions",
    "put_file": "uploads",
    "get_file": "upload checks",
    "get_session": "session checks",
    "delete_session": "session deletions",
    "create_project": "project requests",
    "get_project": "project checks",
}
# Classes whose documented budget is per hour (30 and 10): every probe spends it, so their
# probes (and the account's, which has no budget of its own to protect) start 10 times slower.
HOURLY_CLASSES = ("open_session", "create_project")
SLOW_PROBE_FACTOR = 10.0
# A probe whose outcome never came back (a bug lost it) is given up after this long.
PROBE_LEASE = 300.0
# What every held reason ends with: how the hold ends.
HOW_IT_ENDS = "one request checks now and then (fs360 resume: at once)"


def endpoint_class(endpoint: str) -> str:
    return PACED_WITH.get(endpoint, endpoint)


def clock_text(wall: float, now: float | None = None) -> str:
    """'14:05' today, '2026-11-29 14:05' another day: when a wait ends, in local time."""
    when = time.localtime(wall)
    today = time.localtime(now if now is not None else time.time())
    return time.strftime("%H:%M" if when[:3] == today[:3] else "%Y-%m-%d %H:%M", when)


@dataclass
class Hold:
    reason: str
    level: int = 0             # failures of its probes in a row: each wait grows with it
    until: float = 0.0         # monotonic: nothing is sent before this, then one probe
    probe_until: float = 0.0   # monotonic: a probe is out (its lease) until then
    server_wait: bool = False  # a wait the server asked for (429 with Retry-After)
    # The account's probe passed; the class refused first sends one request of its own before the
    # others go. It holds nothing back but while that request is out, and is said only then.
    trial: bool = False


@dataclass(frozen=True)
class Ticket:
    """A request let through: its endpoint class, whether it is its hold's probe, whether it is
    the account's probe, and whether its outcome counts here at all (the key check at mount)."""
    endpoint: str
    probe: bool = False
    account_probe: bool = False
    counted: bool = True


def is_outage(error: BaseException) -> bool:
    """A failure of the server or the way to it, not an answer about the request: 5xx (a
    redirect and a refused certificate too), no answer, or a 429 without a usable wait."""
    if isinstance(error, RateLimited):
        return error.retry_after is None
    return getattr(error, "outage", False)


def shared_by_all(error: BaseException) -> bool:
    """Whether a failure is held for every request of its kind (the account's, an outage, or a
    wait the server asked for), not only for the request that met it."""
    return isinstance(error, (AccountError, RateLimited)) or is_outage(error)


class Troubles:
    def __init__(self, backoff_base: float = 0.5, backoff_cap: float = 60.0, clock=time.monotonic,
                 wall=time.time, rng=None):
        self._clock = clock
        self._wall = wall
        self._backoff = Backoff(backoff_base, backoff_cap, rng=rng)
        self._slow_backoff = Backoff(backoff_base * SLOW_PROBE_FACTOR, max(backoff_cap, backoff_base), rng=rng)
        self._lock = threading.Lock()
        self._holds: dict[str, Hold] = {}
        self._account: Hold | None = None
        # Refusals of the account in a row: kept when its probe passes, until the class refused
        # first (`_trial_class`) answers a request of its own.
        self._account_level = 0
        self._trial_class: str | None = None
        self._listeners: list[Callable[[], None]] = []
        # Counts the holds that ended: a request held back before one ended, whose caller
        # settles it only after that end was announced, looks again at once (`ended_since`).
        self._ended = 0

    def on_clear(self, listener: Callable[[], None]) -> None:
        """`listener()` is called (no lock held) whenever a hold ends."""
        self._listeners.append(listener)

    # --- before and after each request -----------------------------------------------------

    def admit(self, endpoint: str, *, account_probe: bool = False, counted: bool = True) -> Ticket:
        """A ticket for a request to `endpoint`, or HeldBack with the reason that holds it.
        `account_probe`: the account's own probe, let through while the account is held;
        `counted=False`: an explicit check whose outcome decides nothing here (never held)."""
        cls = endpoint_class(endpoint)
        if not counted:
            return Ticket(cls, counted=False)
        with self._lock:
            now = self._clock()
            if account_probe:
                if self._account is not None:
                    self._account.probe_until = now + PROBE_LEASE
                return Ticket(cls, account_probe=True)
            if self._account is not None:
                raise self._held_back(self._account, cls, now, slow=True)
            hold = self._holds.get(cls)
            if hold is None:
                return Ticket(cls)
            if now < hold.until or now < hold.probe_until:
                raise self._held_back(hold, cls, now)
            hold.probe_until = now + PROBE_LEASE
            return Ticket(cls, probe=True)

    def report(self, ticket: Ticket, error: BaseException | None) -> None:
        """How a request let through by `ticket` ended: None (or any answer about the request
        itself) when the server answered as the API does; the error otherwise."""
        if not ticket.counted:
            return
        with self._lock:
            cleared = self._report_locked(ticket, error, self._clock())
            self._ended += cleared
        if cleared:
            self._tell_listeners()

    def done_unanswered(self, endpoint: str) -> None:
        """A request to `endpoint` whose answer was lost turned out done (the server holds what it
        sent): the server works for its kind of request, as if it had answered. Ends an outage's
        hold of that kind, which nothing else might end (when that was the last upload, no other
        PUT comes to probe it, and status would say uploads fail for good); a wait the server
        asked for stays."""
        # What an answer to a request of that kind, not its probe, would say (`_report_locked`).
        self.report(Ticket(endpoint_class(endpoint)), None)

    def is_past(self, reason: str) -> bool:
        """Whether `reason` is one a hold gave (it ends with how holds end) that no hold gives now:
        what still shows it is stale."""
        return reason.endswith(HOW_IT_ENDS) and reason not in self.reasons()

    def ended_since(self, held: HeldBack) -> bool:
        """Whether a hold ended after `held` was raised (its wait is then over already)."""
        return getattr(held, "ended_count", self._ended) != self._ended

    def _report_locked(self, ticket: Ticket, error: BaseException | None, now: float) -> bool:
        """Needs self._lock; whether a hold ended."""
        cls = ticket.endpoint
        hold = self._holds.get(cls)
        if isinstance(error, NotSent):  # paced back: nothing happened, the probe's turn is free again
            if ticket.probe and hold is not None:
                hold.probe_until = 0.0
            if ticket.account_probe and self._account is not None:
                self._account.probe_until = 0.0
            return False
        if isinstance(error, AccountError):
            self._account_refused_locked(ticket, error, now)
            return False
        if isinstance(error, RateLimited) and error.retry_after is not None:
            self._server_wait_locked(cls, error.retry_after, error.fields.get("asked"), now)
            return False
        if ticket.account_probe:
            if error is not None and is_outage(error) and self._account is not None:
                self._account.level += 1  # the check got no answer: the account is as it was
                self._account.until = now + self._slow_backoff.delay(self._account.level)
                self._account.probe_until = 0.0
                return False
            return self._account_passed_locked(now)
        if error is not None and is_outage(error):
            self._outage_locked(ticket, error, hold, now)
            return False
        # The server answered: whatever held this class is over (a wait the server asked for only
        # once its probe answers: a request let through before it says nothing of it).
        if cls == self._trial_class:
            self._account_level, self._trial_class = 0, None
        if hold is not None and (ticket.probe or not hold.server_wait):
            del self._holds[cls]
            return True
        return False

    def _account_refused_locked(self, ticket: Ticket, error: AccountError, now: float) -> None:
        account = self._account
        if account is None or ticket.account_probe:
            self._account_level += 1
            account = self._account = account or Hold(reason="")
            account.level = self._account_level
            account.until = now + self._slow_backoff.delay(account.level)
            account.probe_until = 0.0
        # Else a request already under way when the account was first refused: nothing new.
        account.reason = (f"{error}. Nothing is sent until it is fixed: {HOW_IT_ENDS}")
        if not ticket.account_probe:
            self._trial_class = ticket.endpoint
            hold = self._holds.get(ticket.endpoint)
            if hold is not None:
                hold.probe_until = 0.0

    def _account_passed_locked(self, now: float) -> bool:
        """The account's probe got an answer that is not a refusal: every endpoint may go, the
        class refused first through one trial request of its own."""
        account, self._account = self._account, None
        if account is None:
            return False
        if self._trial_class is not None:
            trial = self._holds.setdefault(self._trial_class, Hold(reason=account.reason, trial=True))
            trial.until = trial.probe_until = 0.0
        return True

    def _outage_locked(self, ticket: Ticket, error: Fs360Error, hold: Hold | None, now: float) -> None:
        cls = ticket.endpoint
        words = CLASS_WORDS.get(cls, cls)
        if hold is None or ticket.probe:
            hold = self._holds.setdefault(cls, Hold(reason=""))
            hold.level, hold.server_wait, hold.trial = hold.level + 1, False, False
            hold.until = now + self._delay(cls, hold.level)
            hold.probe_until = 0.0
        if isinstance(error, RateLimited):
            hold.reason = f"the server limits {words} (HTTP 429) without saying for how long: {HOW_IT_ENDS}"
        else:
            hold.reason = f"{words} fail: {error}. They wait: {HOW_IT_ENDS}"

    def _server_wait_locked(self, cls: str, seconds: float, asked, now: float) -> None:
        """A 429 with a usable Retry-After of `seconds` (capped; `asked`: what the server said):
        nothing of that class goes before then, and then one probe."""
        words = CLASS_WORDS.get(cls, cls)
        wall = self._wall()
        hold = self._holds.setdefault(cls, Hold(reason=""))
        hold.until = max(hold.until, now + seconds)
        hold.probe_until, hold.server_wait, hold.trial = 0.0, True, False
        ends = clock_text(wall + (hold.until - now), wall)
        if isinstance(asked, (int, float)) and asked > seconds:
            hold.reason = (f"the server asked to wait {_long_duration(asked)} before more {words} (HTTP 429): "
                           f"they wait until {ends}, then {HOW_IT_ENDS}")
        else:
            hold.reason = f"the server asked to wait until {ends} before more {words} (HTTP 429); then {HOW_IT_ENDS}"

    # --- the account's probe, resume, and what status shows ---------------------------------

    def account_probe_due(self) -> bool:
        with self._lock:
            account, now = self._account, self._clock()
            return account is not None and now >= account.until and now >= account.probe_until

    def resume(self) -> None:
        """`fs360 resume`: every wait ends now; each hold's next request is its probe."""
        with self._lock:
            for hold in list(self._holds.values()) + ([self._account] if self._account else []):
                hold.until = hold.probe_until = 0.0
            self._ended += 1

    def held_reason(self, endpoint: str) -> tuple[str, float] | None:
        """(the reason, seconds until its next probe) of what holds `endpoint` now, or None."""
        cls = endpoint_class(endpoint)
        with self._lock:
            now = self._clock()
            if self._account is not None:
                return self._account.reason, self._retry_after(self._account, cls, now, slow=True)
            hold = self._holds.get(cls)
            if hold is None:
                return None
            return hold.reason, self._retry_after(hold, cls, now)

    def reasons(self) -> list[str]:
        """Every reason held now, for status: the account's first."""
        with self._lock:
            now = self._clock()
            holds = ([self._account] if self._account is not None else []) + \
                [hold for hold in self._holds.values() if not hold.trial or hold.probe_until > now]
            return list(dict.fromkeys(hold.reason for hold in holds))

    # --- inside ---------------------------------------------------------------------------------

    def _delay(self, cls: str, level: int, slow: bool = False) -> float:
        backoff = self._slow_backoff if slow or cls in HOURLY_CLASSES else self._backoff
        return backoff.delay(max(1, level))

    def _retry_after(self, hold: Hold, cls: str, now: float, slow: bool = False) -> float:
        """When what waits on `hold` should look again: at the end of its wait, or (its probe out
        or due) after the next wait's length; the end of the hold brings it forward anyway."""
        if hold.until > now:
            return hold.until - now
        return self._delay(cls, hold.level + 1, slow)

    def _held_back(self, hold: Hold, cls: str, now: float, slow: bool = False) -> HeldBack:
        held = HeldBack(hold.reason, retry_after=self._retry_after(hold, cls, now, slow))
        held.endpoint, held.ended_count = cls, self._ended
        return held

    def _tell_listeners(self) -> None:
        for listener in self._listeners:
            listener()


def _wait_words(seconds: float) -> str:
    """'52 s' for a wait of a minute's window, '57 min' and longer ones as _long_duration says."""
    return f"{max(0, round(seconds))} s" if seconds < 120 else _long_duration(seconds)


def _long_duration(seconds: float) -> str:
    """'2 h', '3 days', '31.7 years': a wait far longer than fs360 waits."""
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / (365.25 * 86400):.1f} years"


# What each endpoint's documented budget counts, in words ("1,200 upload requests (PUTs) a minute").
BUDGET_WORDS = {**CLASS_WORDS, "put_file": "upload requests (PUTs)"}
PACING_WAIT_PREFIX = "waiting for the server's rate limit"


def _per_window(seconds: float) -> str:
    return {60.0: "a minute", 3600.0: "an hour"}.get(float(seconds), f"per {seconds:g} s")


def pacing_waits(pacer, wall=time.time) -> list[dict]:
    """What fs360's own pacing holds back now (requests asleep for their turn within an
    endpoint's documented budget), one entry per endpoint: its words, with when the wait ends.
    Nothing to do for anyone: the requests go by themselves."""
    waits = []
    now = wall()
    for endpoint, (count, first, last) in sorted(pacer.waiting().items()):
        limit, window = pacer.limits.get(endpoint, (0, 0.0))
        until = now + last
        budget = (f"the documented budget of {limit:,} {BUDGET_WORDS.get(endpoint, endpoint)} "
                  f"{_per_window(window)}" if limit else "the documented budget")
        who = "1 request waits its" if count == 1 else f"{count} requests wait their"
        reason = (f"{PACING_WAIT_PREFIX}: fs360 keeps to {budget} and it is used up for now, so {who} turn until "
                  f"{time.strftime('%H:%M:%S', time.localtime(until))} (in {_wait_words(last)}), and what "
                  f"is queued after them follows as the budget allows; nothing to do, they go on by themselves")
        waits.append({"endpoint": endpoint, "waiting": count, "next_in_seconds": round(first, 1),
                      "until_seconds": round(last, 1), "until": until, "reason": reason})
    return waits


@dataclass(frozen=True)
class Passed:
    """A request let through: its ticket (troubles) and its booking (pacer)."""
    ticket: Ticket
    booking: tuple | None = None


class Admission:
    """What a request asks before it goes and tells after it ended: the troubles (is its kind
    held?), then the pacer (its turn), as one object shared by every thread's requests."""

    def __init__(self, pacer, troubles: Troubles):
        self.pacer = pacer
        self.troubles = troubles

    def admit(self, endpoint: str, wait: bool = True, account_probe: bool = False, counted: bool = True) -> Passed:
        """Blocks for the request's turn (wait=False: raises WaitForRateLimit instead); raises
        HeldBack while a shared failure holds its kind."""
        ticket = self.troubles.admit(endpoint, account_probe=account_probe, counted=counted)
        try:
            if wait:
                return Passed(ticket, self.pacer.acquire_booking(endpoint)[1])
            seconds, booking = self.pacer.try_acquire_booking(endpoint)
            if seconds > 0:
                raise WaitForRateLimit(f"{endpoint}: the documented rate limit is used up for {seconds:.0f} s",
                                       retry_after=seconds)
            return Passed(ticket, booking)
        except BaseException as exc:
            self.troubles.report(ticket, exc if isinstance(exc, NotSent) else NotSent())
            raise

    def report(self, passed: Passed, error: BaseException | None, reached: bool = True) -> None:
        """How it ended; `reached=False`: it never reached the server (it did not connect), so the
        pacer does not count it."""
        if not reached:
            self.pacer.unsent(passed.booking)
        self.troubles.report(passed.ticket, error)
