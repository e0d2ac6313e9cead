"""The answer's head: fs360's lean parse of header lines (`transport._parsed_head`) must make the
message http.client's own `parse_headers` makes, for every head, plain or odd."""

import http.client
import io

from hypothesis import example, given, settings, strategies as st

from fs360.api.transport import _parsed_head

# Header lines built from the pieces that matter to either parser: names, colons, spaces, tabs,
# CR and LF alone or together, folded lines, bytes past ASCII.
_PIECES = st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"X-a", b"a", b":", b": ", b" ", b"\t",
                           b"\r", b"\n", b"\r\n", b"chunked", b"10", b"From ", b"\xe9", b"\x00", b";", b"="])
_LINES = st.lists(st.lists(_PIECES, max_size=6).map(b"".join), max_size=6)


def _head(lines: list[bytes]) -> bytes:
    return b"".join(line if line.endswith(b"\n") else line + b"\r\n" for line in lines) + b"\r\n"


def _both(head: bytes):
    ours = _parsed_head(http.client._read_headers(io.BytesIO(head)))
    theirs = http.client.parse_headers(io.BytesIO(head))
    return ours.items(), theirs.items()


@settings(max_examples=1500, deadline=None)
@given(_LINES)
@example([b"Content-Length: 10", b"Connection: keep-alive"])
@example([b"X-a: one", b" folded", b"X-a: two"])
@example([b"X-a: a\rb", b"Content-Length: 3"])
@example([b"X-a:\t  value \t", b"Empty:"])
@example([b"Bad Name: x", b"Content-Length: 3"])
@example([b": no name"])
def test_the_lean_parse_makes_http_clients_message(lines):
    ours, theirs = _both(_head(lines))
    assert ours == theirs


def test_repeated_headers_are_all_kept_in_order():
    ours, _ = _both(b"Content-Length: 3\r\nX-a: 1\r\nx-A: 2\r\n\r\n")
    assert ours == [("Content-Length", "3"), ("X-a", "1"), ("x-A", "2")]
