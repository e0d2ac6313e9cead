"""A PUT is one writer of one file: it succeeds when the request ends with its whole body,
and fails when the body is cut short (never uploaded). An empty PUT is held back: WebDAV
clients (Windows' WebClient, Finder, davfs2) create a file with an empty PUT and send its
content with a second PUT moments later, and the server can never replace a file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from wsgidav.dav_error import DAVError

from ..errors import Fs360Error
from .chunked import MalformedChunk
from .errors import answered

log = logging.getLogger(__name__)

CUT_SHORT = "the WebDAV client's upload of it was cut short; copy it again"
NEVER_CAME = "the WebDAV client created it empty and the server stopped before its content came; copy it again"
# The copy loop of COPY and of a PUT body: the block the model writes at a time.
BLOCK = 1024 * 1024


def expected_length(environ: dict) -> int | None:
    """How many bytes the request's body must hold to be whole (None: only its framing says).
    Chunked bodies are cut short visibly (cheroot raises on a broken chunk); Finder's chunked
    PUTs also say their length in X-Expected-Entity-Length."""
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    text = environ.get("HTTP_X_EXPECTED_ENTITY_LENGTH") if chunked else environ.get("CONTENT_LENGTH")
    try:
        return int(text) if text not in (None, "") else (None if chunked else 0)
    except ValueError:
        return None


SERVER_STOPPING = "the WebDAV server is stopping: the file is not taken; send it again once the server is back"


class BodyWriter:
    """The file object WsgiDAV streams a PUT body into: each block goes to the model's write."""

    def __init__(self, model, fh: int, path: str, stopping=lambda: False):
        self.model = model
        self.fh = fh
        self.path = path
        self.written = 0
        self.stopping = stopping  # whether the server is stopping: then a body cut short is its doing

    def writelines(self, body) -> None:
        """WsgiDAV hands the body as a stream of blocks. One the HTTP server cannot read (a
        malformed chunk size, a chunked body that ends without its last chunk: cheroot raises
        ValueError; a connection that fails) is the client's fault: a 400 with the reason and
        one log line, not WsgiDAV's 500. The file is then left interrupted (end_write)."""
        blocks = iter(body)
        while True:
            try:
                data = next(blocks)
            except StopIteration:
                return
            except (ValueError, OSError) as exc:
                if isinstance(exc, MalformedChunk):
                    what = f"its chunked body is malformed: {exc}"
                elif isinstance(exc, ValueError):
                    what = "its chunked body is malformed or ends without its last chunk"
                else:
                    what = f"the connection failed while its body came ({exc.strerror or exc})"
                if self.stopping():  # not the client's fault: "try again later"
                    raise DAVError(503, context_info=SERVER_STOPPING) from None
                reason = f"{what}: the file is not taken; send it again"
                log.warning("PUT %s: %s", self.path, reason if str(exc) in reason else f"{reason} ({exc})")
                raise DAVError(400, context_info=reason) from None
            self.write(data)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with answered():  # a refusal (the server holds other bytes, a cap, a full disk) ends the PUT
            while view:
                count = self.model.write(self.fh, bytes(view[:BLOCK]), self.written)
                self.written += count
                view = view[count:]

    def close(self) -> None:
        pass  # the writer ends in end_write, which knows whether the body was whole


class ContentReader:
    """A file object over an open handle of the model, for GET (seek for ranges)."""

    def __init__(self, model, fh: int):
        self.model = model
        self.fh = fh
        self.position = 0

    def seek(self, position: int) -> None:
        self.position = position

    def read(self, size: int = BLOCK) -> bytes:
        data = self.model.read(self.fh, size, self.position)
        self.position += len(data)
        return data

    def close(self) -> None:
        self.model.release(self.fh)


@dataclass
class Held:
    fh: int
    timer: threading.Timer | None = None
    rearmed: int = 0  # grace times that passed while the client held a lock on it


class HeldEmptyFiles:
    """Files whose last PUT was empty (or created by a LOCK), kept open as unfinished writers:
    the next PUT of the same name takes the open file over and writes its content; with none,
    the empty file is final after `grace` seconds, or later while the client holds a lock on it.
    Keyed by path; a MOVE re-keys them, a DELETE drops them."""

    def __init__(self, model, grace: float, locked):
        self.model = model
        self.grace = grace
        self.locked = locked  # path -> whether a client holds a lock on it
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()

    def hold(self, path: str, fh: int) -> None:
        held = Held(fh)
        with self._lock:
            previous = self._held.pop(path, None)
            self._held[path] = held
            self._arm(path, held)
        if previous is not None:
            self._settle(previous, True)

    def _arm(self, path: str, held: Held) -> None:
        held.timer = threading.Timer(self.grace, self._expire, (path, held))
        held.timer.name = "fs360-webdav-held"
        held.timer.daemon = True
        held.timer.start()

    def take(self, path: str) -> int | None:
        """The open handle of `path` when it is held (the caller now owns it)."""
        with self._lock:
            held = self._held.pop(path, None)
        if held is None:
            return None
        held.timer.cancel()
        return held.fh

    def rearmed(self, path: str) -> int:
        with self._lock:
            held = self._held.get(path)
            return held.rearmed if held else 0

    def moved(self, old: str, new: str) -> None:
        old, new = old.rstrip("/"), new.rstrip("/")
        with self._lock:
            for path in [p for p in self._held if p == old or p.startswith(old + "/")]:
                held = self._held.pop(path)
                held.timer.cancel()
                moved = new + path[len(old):]
                self._held[moved] = held
                self._arm(moved, held)

    def drop(self, path: str) -> None:
        """`path` is deleted: its held writer ends without a file."""
        path = path.rstrip("/")
        with self._lock:
            dropped = [self._held.pop(p) for p in list(self._held) if p == path or p.startswith(path + "/")]
        for held in dropped:
            held.timer.cancel()
            self._settle(held, False, "deleted before its content came")

    def _expire(self, path: str, held: Held) -> None:
        with self._lock:
            if self._held.get(path) is not held:
                return  # taken over, moved or dropped meanwhile
            if self.locked(path):
                held.rearmed += 1
                self._arm(path, held)  # the client still holds it: its content may yet come
                return
            del self._held[path]
        log.info("%s stayed empty for %g s after its empty PUT: final as an empty file", path, self.grace)
        self._settle(held, True)

    def close_all(self) -> None:
        """The server stops: files whose content never came are left unfinished, never uploaded."""
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for entry in held:
            entry.timer.cancel()
            self._settle(entry, False, NEVER_CAME)

    def _settle(self, held: Held, succeeded: bool, reason: str = "") -> None:
        try:
            self.model.finish_writer(held.fh, succeeded, reason)
        except Fs360Error as exc:  # nobody is waiting for the answer: it stays in status
            log.info("an empty file's close was refused: %s", exc)
