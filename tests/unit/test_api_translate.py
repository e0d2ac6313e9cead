"""The client's one translator: every api.md error code becomes the right class with its fields.

Answers as the transport hands them over (status, case-insensitive headers, the request's URL
and body length) are passed through `ApiClient._translate` with their bodies (no network,
nothing mocked).
"""

import errno
import json
import math
from dataclasses import dataclass

import pytest
from urllib3 import HTTPHeaderDict

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from fs360.api.transport import Answer
from fs360.api.client import MAX_RETRY_AFTER, ApiClient, _file_progress, _retry_after, _seconds
from fs360.api.troubles import is_outage
from fs360.config import MIN_CHUNK_SIZE, Settings
from fs360 import errors as E


@dataclass(frozen=True)
class Reply:
    answer: Answer
    content: bytes


def response(status: int, body=None, raw: bytes | None = None, headers=None, url: str = "",
             sent_length: int = 0) -> Reply:
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    return Reply(Answer(status, HTTPHeaderDict(headers or {}), url, sent_length), content)


def client_for(pacer=None):
    return ApiClient(Settings(api_url="http://127.0.0.1:9/api/v1", api_key="sk_test_never_printed"), pacer)


@pytest.fixture
def client():
    return client_for()


def translate(client, resp, endpoint="put_file"):
    return client._translate(endpoint, resp.answer, resp.content)


# status, code, expected class, retryable
TABLE = [
    (400, "invalid_upload_id", E.ApiError, False),
    (400, "invalid_filename", E.InvalidFilenameRemote, False),
    (400, "invalid_content_range", E.ApiError, False),
    (400, "chunk_length_mismatch", E.ApiError, False),
    (404, "upload_session_not_found", E.SessionNotFound, False),
    (404, "file_not_found", E.RemoteFileNotFound, False),
    (411, "length_required", E.ApiError, False),
    (400, "upload_id_or_download_link_required", E.ApiError, False),
    (400, "provide_either_upload_id_or_download_link", E.ApiError, False),
    (400, "project_creation_failed", E.ProjectCreationFailed, True),
]


@pytest.mark.parametrize("status,code,cls,retryable", TABLE, ids=[t[1] for t in TABLE])
def test_documented_codes(client, status, code, cls, retryable):
    with pytest.raises(E.ApiError) as info:
        translate(client, response(status, {"error": code}))
    exc = info.value
    assert type(exc) is cls
    assert exc.code == code and exc.status == status
    assert exc.retryable is retryable
    # Words first, whatever the code: what happened and what to do, the exchange's particulars after.
    assert not str(exc).startswith("put_file: HTTP") and str(exc).endswith(f"(put_file: HTTP {status} {code})"), exc


# status, code (None: an HTML page), class, words of the advice
ACCOUNT = [
    (401, "unauthorized", E.Unauthorized, "make a new API key with both scopes"),
    (401, "missing_bearer_token", E.Unauthorized, "make a new API key with both scopes"),
    (401, "invalid_api_key", E.Unauthorized, "make a new API key with both scopes"),
    (401, "key_revoked_yesterday", E.Unauthorized, "make a new API key with both scopes"),
    (401, None, E.Unauthorized, "make a new API key with both scopes"),
    (403, "insufficient_scope", E.Forbidden, "both scopes projects:read and projects:write"),
    (403, "tariff_does_not_allow_api", E.Forbidden, "upgrade"),
    (403, "tariff_forbids_upload", E.Forbidden, "upgrade"),
    (403, "tariff", E.Forbidden, "upgrade"),
    (403, "project_limit_reached", E.Forbidden, "project limit"),
    (403, "email_not_verified", E.Forbidden, "verify"),
    (403, "account_suspended_for_review", E.Forbidden, "profile page"),
    (403, None, E.Forbidden, "profile page"),
    (402, "storage_quota_exceeded", E.QuotaExceeded, "free space"),
    (402, "payment_required", E.QuotaExceeded, "free space"),
    (403, "storage_quota_exceeded", E.Forbidden, "free space"),  # the status picks the class, the code the advice
    (400, "invalid_api_key", E.Unauthorized, "make a new API key"),  # an account code on another status
]


@pytest.mark.parametrize("status,code,cls,advice", ACCOUNT, ids=[f"{t[0]}-{t[1]}" for t in ACCOUNT])
def test_account_errors_whatever_the_code(client, status, code, cls, advice):
    resp = response(status, {"error": code}) if code else response(status, raw=b"<html>Forbidden</html>")
    with pytest.raises(E.AccountError) as info:
        translate(client, resp)
    exc = info.value
    assert type(exc) is cls and exc.status == status and not exc.retryable
    assert advice in exc.reason and advice in str(exc)
    assert exc.code == (code or cls.code)
    assert "sk_test" not in str(exc)


def test_non_contiguous_carries_received(client):
    with pytest.raises(E.NonContiguousChunk) as info:
        translate(client, response(409, {"error": "non_contiguous_chunk", "received": 8388608}))
    assert info.value.received == 8388608 and info.value.retryable


@pytest.mark.parametrize("code,cls,errno_", [("file_too_large", E.FileTooLarge, errno.EFBIG),
                                              ("session_too_large", E.SessionTooLarge, errno.EDQUOT)])
def test_too_large_carries_limit(client, code, cls, errno_):
    with pytest.raises(cls) as info:
        translate(client, response(413, {"error": code, "limit": 1024}))
    assert info.value.fields["limit"] == 1024 and info.value.errno == errno_


def test_extension_carries_extension_and_allowed(client):
    with pytest.raises(E.ExtensionNotAllowed) as info:
        translate(client, response(415, {"error": "extension_not_allowed", "extension": "exe",
                                         "allowed": ["jpg", "las"]}))
    assert info.value.fields["extension"] == "exe"
    assert info.value.fields["allowed"] == ["jpg", "las"]


@pytest.mark.parametrize("header,expected", [("7", 7.0), ("0", 0.5), (" 12 ", 12.0), ("99999", 3600.0),
                                             (None, None), ("", None), ("garbage", None), ("-3", None),
                                             ("nan", None), ("inf", None)])
def test_rate_limited_reads_retry_after(client, header, expected):
    with pytest.raises(E.RateLimited) as info:
        translate(client, response(429, {"error": "rate_limited"}, headers={"Retry-After": header} if header else {}))
    assert info.value.retry_after == expected and info.value.retryable


def test_rate_limited_huge_wait_is_capped_and_said(client):
    with pytest.raises(E.RateLimited) as info:
        translate(client, response(429, {"error": "rate_limited"}, headers={"Retry-After": "99999"}))
    assert info.value.retry_after == MAX_RETRY_AFTER
    assert "retry after 3600 s" in str(info.value) and "99999" in str(info.value)


def test_retry_after_http_date():
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
    assert _retry_after("Sun, 29 Nov 2026 12:02:00 GMT", now=now) == 120.0
    assert _retry_after("Sun, 29 Nov 2026 12:02:00 -0000", now=now) == 120.0  # naive: GMT
    assert _retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now=now) == 0.0      # past: go now
    assert _retry_after("Sun, 32 Nov 2026 25:00:00 GMT", now=now) is None


def test_rate_limited_with_a_date_waits_until_then(client):
    in_two_minutes = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    with pytest.raises(E.RateLimited) as info:
        translate(client, response(429, {"error": "rate_limited"}, headers={"Retry-After": in_two_minutes}))
    assert 100 <= info.value.retry_after <= 121
    assert f"retry after {info.value.retry_after:g} s" in str(info.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_retryable(client, status):
    with pytest.raises(E.ServerError) as info:
        translate(client, response(status, {"error": "internal_error"}))
    assert info.value.retryable and info.value.status == status


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_never_followed_and_names_the_target(client, status):
    resp = response(status, raw=b"", headers={"Location": "http://other:1234/api/v1/uploads"})
    with pytest.raises(E.Redirected) as info:
        translate(client, resp)
    exc = info.value
    assert exc.location == "http://other:1234/api/v1/uploads" and exc.status == status
    assert "http://other:1234/api/v1/uploads" in str(exc) and "--api-url" in str(exc)
    assert exc.retryable and not isinstance(exc, E.ApiError)


def test_relative_redirect_is_resolved_and_control_characters_dropped(client):
    resp = response(302, raw=b"", headers={"Location": "/login?next=x\x1b[31m"},
                    url="http://127.0.0.1:9/api/v1/uploads")
    with pytest.raises(E.Redirected) as info:
        translate(client, resp)
    assert info.value.location.startswith("http://127.0.0.1:9/login?next=x") and "\x1b" not in str(info.value)


def test_extra_fields_enrich_the_message(client):
    body = {"error": "invalid_filename", "message": "Name has\na bad character", "detail": "position 3"}
    with pytest.raises(E.InvalidFilenameRemote) as info:
        translate(client, response(400, body))
    assert "Name has a bad character" in str(info.value) and "position 3" in str(info.value)
    assert info.value.fields["message"] == "Name has\na bad character"


def test_hostile_field_names_cannot_break_the_translator(client):
    body = {"error": "file_not_found", "status": "x", "code": 5, "reason": [], "message": {"nested": 1}}
    with pytest.raises(E.RemoteFileNotFound) as info:
        translate(client, response(404, body))
    assert info.value.status == 404 and info.value.code == "file_not_found" and info.value.fields["code"] == 5


@pytest.mark.parametrize("value,expected", [(259200, 259200.0), (259200.0, 259200.0), (0, 0.0), (1.5, 1.5)])
def test_expires_in_seconds_takes_any_json_number(value, expected):
    assert _seconds(value) == expected and isinstance(_seconds(value), float)


@pytest.mark.parametrize("value", [True, False, -1, -0.5, math.nan, math.inf, "259200", None, [1]])
def test_expires_in_seconds_refuses_what_is_not_a_duration(value):
    with pytest.raises(E.MalformedResponse):
        _seconds(value)


@pytest.mark.parametrize("raw", [b'{"received": 12, "total": <html>', b"[1, 2]", b"", b"<html></html>"])
def test_2xx_not_a_json_object_is_malformed(client, raw):
    with pytest.raises(E.MalformedResponse) as info:
        translate(client, response(200, raw=raw))
    assert info.value.retryable


@pytest.mark.parametrize("body", [{"received": 11, "total": 10, "complete": True},   # received_gt_total
                                  {"total": 10},                                       # missing_fields
                                  {"received": 10, "total": 10, "complete": False},    # inconsistent
                                  {"received": True, "total": 10, "complete": False},
                                  {"received": -1, "total": 10, "complete": False}])
def test_impossible_file_states_are_malformed(body):
    with pytest.raises(E.MalformedResponse):
        _file_progress(body)


def test_a_failing_server_is_said_in_words_with_its_code_after(client):
    with pytest.raises(E.ServerError) as info:
        translate(client, response(503, {"error": "internal_error"}))
    assert str(info.value) == "the server failed to answer (put_file: HTTP 503 internal_error)"


def test_unknown_coded_4xx_is_a_final_api_error(client):
    with pytest.raises(E.ApiError) as info:
        translate(client, response(418, {"error": "teapot"}))
    assert type(info.value) is E.ApiError and info.value.code == "teapot" and not info.value.retryable
    assert str(info.value) == ("the server refused it with a reason fs360 has no advice for: if it stays, report it "
                               "with fs360.log from the cache dir (put_file: HTTP 418 teapot)")


@pytest.mark.parametrize("status,raw", [(413, b"<html><body>413 Request Entity Too Large</body></html>"),
                                        (413, b'{"message": "Request Too Long"}'),
                                        (418, b'{"nothing": 1}'), (404, b"Not Found"), (400, b""),
                                        (502, b"<html>Bad Gateway</html>"), (504, b"<html>Gateway Time-out</html>")])
def test_error_without_the_apis_code_is_transient(client, status, raw):
    """A proxy's page or a gateway's JSON is not the API's verdict: a file is never refused for it."""
    with pytest.raises(E.ServerError) as info:
        translate(client, response(status, raw=raw, sent_length=8 << 20))
    assert info.value.retryable and info.value.status == status and not isinstance(info.value, E.ApiError)
    # In words first, the code after: status shows this text as the reason files wait.
    said = str(info.value)
    assert said.startswith(("a proxy in front of the server refused a request of 8388608 bytes as too large (",
                            "the server, or a proxy in front of it, failed to answer (",
                            "the server, or a proxy in front of it, refused the request without saying why (")), said
    assert f"(put_file: HTTP {status} without " in said


def test_a_413_to_a_put_without_the_apis_code_is_about_the_bodys_size_not_an_outage(client):
    """A proxy's body limit (api.md Part C): the uploader sends smaller chunks; every other PUT
    goes on meanwhile (no circuit opens). To another request it is a proxy's error as any."""
    page = b"<html><body>413 Request Entity Too Large</body></html>"
    with pytest.raises(E.BodyTooLarge) as info:
        translate(client, response(413, raw=page))
    assert info.value.status == 413 and not is_outage(info.value)
    with pytest.raises(E.ServerError) as other:
        translate(client, response(413, raw=page), endpoint="create_project")
    assert type(other.value) is E.ServerError and is_outage(other.value)


def test_a_413_to_the_smallest_put_is_an_outage_held_behind_one_probe(client):
    """A proxy that refuses even a body of the smallest chunk size refuses every body: shared
    by every file, so it opens the PUTs' circuit instead of costing a request per file."""
    page = b"<html><body>413 Request Entity Too Large</body></html>"
    for sent, outage in ((MIN_CHUNK_SIZE, True), (MIN_CHUNK_SIZE + 1, False)):
        refused = response(413, raw=page, sent_length=sent)
        with pytest.raises(E.BodyTooLarge) as info:
            translate(client, refused)
        assert is_outage(info.value) is outage, sent
        # The outage is every file's reason to wait: it says what to do, not only the code.
        assert ("nothing can be uploaded through it; ask whoever runs it" in str(info.value)) is outage, sent


def test_settings_repr_hides_the_key(client):
    settings = Settings(api_key="sk_secret_value")
    assert "sk_secret_value" not in repr(settings)


def test_deadlines_by_kind_of_request(client):
    """A small JSON request ends within 30 s; a PUT within that plus its body at 64 KiB/s."""
    assert client.deadline_for(0) == 30.0
    assert client.deadline_for(8 * 1024 * 1024) == 30.0 + 128.0
