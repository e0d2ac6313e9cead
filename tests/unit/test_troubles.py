"""Failures shared by every request of a kind (api/troubles.py), on a simulated clock: one probe
decides, nothing else of the kind is sent meanwhile, and every held request says why."""

from __future__ import annotations

import random

import pytest

from fs360 import errors as E
from fs360.api.troubles import HOW_IT_ENDS, Troubles


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def troubles(clock):
    return Troubles(backoff_base=0.5, backoff_cap=60.0, clock=clock, rng=random.Random(1))


def held(troubles, endpoint) -> E.HeldBack:
    with pytest.raises(E.HeldBack) as info:
        troubles.admit(endpoint)
    return info.value


def test_an_outage_holds_its_class_until_one_probe_answers(troubles, clock):
    cleared = []
    troubles.on_clear(lambda: cleared.append(clock.now))
    troubles.report(troubles.admit("put_file"), E.ServerError("put_file: HTTP 503 internal_error", status=503))
    # Nothing of that kind goes, with the reason; other kinds go on.
    waiting = held(troubles, "put_file")
    assert "uploads fail: put_file: HTTP 503" in str(waiting) and HOW_IT_ENDS in str(waiting)
    assert 0 < waiting.retry_after <= 0.5 and waiting.endpoint == "put_file"
    assert not troubles.admit("get_file").probe
    # Its wait over: exactly one request goes, as its probe.
    clock.now += waiting.retry_after
    probe = troubles.admit("put_file")
    assert probe.probe
    assert held(troubles, "put_file").retry_after > 0  # the others wait for the probe
    # The probe fails: a longer wait.
    troubles.report(probe, E.TransportError("cannot reach 127.0.0.1:9: connection refused"))
    longer = held(troubles, "put_file")
    assert waiting.retry_after < longer.retry_after <= 1.0 and "connection refused" in str(longer)
    clock.now += longer.retry_after
    probe = troubles.admit("put_file")
    assert cleared == []
    # Any answer of the server (even a refusal of that one file) closes it, and says so.
    troubles.report(probe, E.RemoteFileNotFound("get_file: HTTP 404 file_not_found", status=404))
    assert cleared == [clock.now] and troubles.reasons() == []
    assert not troubles.admit("put_file").probe


def test_a_request_under_way_when_it_opened_does_not_lengthen_the_wait(troubles, clock):
    first, second = troubles.admit("open_session"), troubles.admit("open_session")
    troubles.report(first, E.ServerError("open_session: HTTP 503", status=503))
    before = held(troubles, "open_session").retry_after
    troubles.report(second, E.ServerError("open_session: HTTP 503", status=503))
    assert held(troubles, "open_session").retry_after == before
    # Hourly budgets (30 sessions, 10 projects): probes start ten times slower.
    assert 2.5 <= before <= 5.0


def test_the_account_holds_everything_and_its_own_probe_decides(troubles, clock):
    cleared = []
    troubles.on_clear(lambda: cleared.append(True))
    refusal = E.Forbidden("your plan does not allow uploads through the API: upgrade it (HTTP 403 "
                          "tariff_does_not_allow_api)", status=403, code="tariff_does_not_allow_api")
    troubles.report(troubles.admit("open_session"), refusal)
    reasons = {str(held(troubles, endpoint)) for endpoint in ("open_session", "put_file", "get_project")}
    assert len(reasons) == 1 and "your plan does not allow uploads through the API" in reasons.pop()
    assert not troubles.account_probe_due()
    clock.now += 5.0
    assert troubles.account_probe_due()
    # Still refused: the next probe waits longer.
    probe = troubles.admit("get_session", account_probe=True)
    assert not troubles.account_probe_due()  # one probe at a time
    troubles.report(probe, refusal)
    clock.now += 5.0
    assert not troubles.account_probe_due()
    clock.now += 5.0
    assert troubles.account_probe_due()
    # It passes: everything goes, but the kind refused first sends one request of its own first.
    troubles.report(troubles.admit("get_session", account_probe=True),
                    E.SessionNotFound("get_session: HTTP 404 upload_session_not_found", status=404))
    assert cleared == [True]
    # Nothing is held back until the trial goes: status says nothing (the project limit may be
    # lifted; only the next request of that kind can tell), then it says why others wait.
    assert troubles.reasons() == []
    assert not troubles.admit("put_file").probe
    trial = troubles.admit("open_session")
    assert trial.probe
    held(troubles, "open_session")
    assert len(troubles.reasons()) == 1 and "your plan does not allow" in troubles.reasons()[0]
    # That one is refused again (a refusal of this kind only): held again, for longer than before.
    troubles.report(trial, refusal)
    clock.now += 9.9
    assert not troubles.account_probe_due()
    clock.now += 10.1
    assert troubles.account_probe_due()
    troubles.report(troubles.admit("get_session", account_probe=True), None)
    troubles.report(troubles.admit("open_session"), None)  # the trial passes: all clear, from the start again
    assert troubles.reasons() == []
    troubles.report(troubles.admit("put_file"), refusal)
    clock.now += 5.0
    assert troubles.account_probe_due()


def test_a_wait_the_server_asked_for_holds_its_class_with_the_time_and_resume_ends_it(troubles, clock):
    under_way = troubles.admit("put_file")
    troubles.report(troubles.admit("put_file"),
                    E.RateLimited("put_file: rate limited, retry after 3600 s", retry_after=3600.0, asked=1e9))
    troubles.report(under_way, None)  # let through before it: says nothing of the server's wait
    waiting = held(troubles, "put_file")
    assert waiting.retry_after == pytest.approx(3600.0)
    assert "the server asked to wait 31.7 years before more uploads (HTTP 429): they wait until" in str(waiting)
    assert troubles.admit("open_session")  # what the server limited, nothing else
    troubles.resume()
    assert troubles.admit("put_file").probe
    # A definite wait of its own: "until HH:MM".
    troubles.report(troubles.admit("get_file"), E.RateLimited("get_file: rate limited", retry_after=30.0, asked=30))
    assert "the server asked to wait until " in str(held(troubles, "get_file"))
    # A 429 that does not say how long is an outage of that kind.
    troubles.report(troubles.admit("get_session"), E.RateLimited("get_session: rate limited", retry_after=None))
    assert "without saying for how long" in str(held(troubles, "get_session"))


def test_a_probe_not_sent_frees_its_turn_and_checks_never_count(troubles, clock):
    troubles.report(troubles.admit("put_file"), E.TransportError("no answer"))
    clock.now += 1.0
    probe = troubles.admit("put_file")
    troubles.report(probe, E.WaitForRateLimit("not its turn", retry_after=1.0))
    assert troubles.admit("put_file").probe  # the next one may probe at once
    # The key check at mount is never held, and its outcome changes nothing here.
    check = troubles.admit("put_file", counted=False)
    troubles.report(check, E.Unauthorized("refused", status=401))
    assert troubles.reasons() == ["uploads fail: no answer. They wait: " + HOW_IT_ENDS]
