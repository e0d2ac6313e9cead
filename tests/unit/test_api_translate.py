"""The client's one translator: every api.md error code becomes the right class with its fields.

Real `requests.Response` objects are built and passed through `ApiClient._translate`
(no network, nothing mocked).
"""

import errno
import json

import pytest
import requests

from fs360.api.client import ApiClient, _file_progress
from fs360.config import Settings
from fs360 import errors as E


def response(status: int, body=None, raw: bytes | None = None, headers=None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    r.headers.update(headers or {})
    return r


@pytest.fixture
def client():
    return ApiClient(Settings(api_url="http://127.0.0.1:9/api/v1", api_key="sk_test_never_printed"))


def translate(client, resp, endpoint="put_file"):
    return client._translate(endpoint, resp, resp.content)


# status, code, expected class, retryable, errno
TABLE = [
    (402, "storage_quota_exceeded", E.QuotaExceeded, False),
    (403, "tariff_forbids_upload", E.Forbidden, False),
    (403, "tariff", E.Forbidden, False),
    (403, "insufficient_scope", E.Forbidden, False),
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
    assert E.errno_of(exc) == E.ERRNO_TABLE[next(c for c in cls.__mro__ if c in E.ERRNO_TABLE)][0]


def test_unauthorized(client):
    with pytest.raises(E.Unauthorized) as info:
        translate(client, response(401, {"error": "unauthorized"}))
    assert not info.value.retryable
    assert "sk_test" not in str(info.value)


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


@pytest.mark.parametrize("header,expected", [("7", 7.0), ("0", 0.5), (None, 1.0), ("garbage", 1.0),
                                             ("99999", 3600.0)])
def test_rate_limited_reads_retry_after(client, header, expected):
    with pytest.raises(E.RateLimited) as info:
        translate(client, response(429, {"error": "rate_limited"}, headers={"Retry-After": header} if header else {}))
    assert info.value.retry_after == expected and info.value.retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_retryable(client, status):
    with pytest.raises(E.ServerError) as info:
        translate(client, response(status, {"error": "internal_error"}))
    assert info.value.retryable and info.value.status == status


def test_html_error_page_is_a_server_error(client):
    with pytest.raises(E.ServerError):
        translate(client, response(502, raw=b"<html><body>Bad gateway</body></html>"))


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


def test_unknown_4xx_is_a_final_api_error(client):
    with pytest.raises(E.ApiError) as info:
        translate(client, response(418, {"nothing": 1}))
    assert type(info.value) is E.ApiError and info.value.code == "http_418" and not info.value.retryable


def test_settings_repr_hides_the_key(client):
    settings = Settings(api_key="sk_secret_value")
    assert "sk_secret_value" not in repr(settings)
