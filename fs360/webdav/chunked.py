"""cheroot's reader of chunked request bodies, strict about each chunk's size line.

cheroot reads a size with Python's `int(line, 16)`, which takes what HTTP does not: `-5` (any
size of 0 or less ends its body, so a PUT of `-5`, then "hello", was an empty file, and an empty
file went up where the client sent bytes), `+5`, `0x5`, `5_0`, and sizes no socket read can
take (an OverflowError, answered 500). A size line here is 1 to 16 hex digits (RFC 9112 7.1),
at most MAX_SIZE_LINE bytes with its extensions, and a chunk at most MAX_CHUNK bytes, since
cheroot holds a whole line and a whole chunk in memory; anything
else is a MalformedChunk (a ValueError, as cheroot's own), which the PUT answers with 400
(writers.BodyWriter). `install()` puts it in place of cheroot's, for the WebDAV server's process.
"""

from __future__ import annotations

import re

import cheroot.server

# cheroot reads a whole chunk into memory, in each of the server's threads.
MAX_CHUNK = 16 * 1024 * 1024
# A size line with its extensions: cheroot would read one of any length into memory.
MAX_SIZE_LINE = 4096
# chunk-size [ BWS ";" chunk-ext ] CRLF
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n?")


class MalformedChunk(ValueError):
    """A chunk size line that HTTP does not allow, or a chunk larger than fs360 reads at once."""


class _SizeLines:
    """The connection's reader as cheroot's chunked reader sees it: each `readline` (only ever
    a chunk's size line) checked before cheroot parses it."""

    def __init__(self, rfile):
        self._rfile = rfile

    def readline(self, *args) -> bytes:
        line = self._rfile.readline(MAX_SIZE_LINE + 1)
        if not line:
            return line  # the connection's end: cheroot's own error
        if len(line) > MAX_SIZE_LINE:
            raise MalformedChunk(f"a chunk size line longer than {MAX_SIZE_LINE} bytes")
        match = _SIZE_LINE.fullmatch(line)
        if match is None:
            raise MalformedChunk(f"a chunk size line of {line[:40]!r} is not a hexadecimal size")
        if int(match.group(1), 16) > MAX_CHUNK:
            raise MalformedChunk(f"a chunk of {int(match.group(1), 16)} bytes is more than fs360 takes at once "
                                 f"({MAX_CHUNK} bytes)")
        return line

    def read(self, *args) -> bytes:
        return self._rfile.read(*args)

    def __getattr__(self, name):
        return getattr(self._rfile, name)  # close() and the like, as cheroot's own reader has them


class StrictChunkedRFile(cheroot.server.ChunkedRFile):
    def __init__(self, rfile, maxlen, bufsize=8192):
        super().__init__(_SizeLines(rfile), maxlen, bufsize)


def install() -> None:
    """cheroot makes its chunked reader by this module-level name (HTTPRequest.read_request_headers)."""
    cheroot.server.ChunkedRFile = StrictChunkedRFile
