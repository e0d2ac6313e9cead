"""What the hostile-server faults answer (see faults.py for the kinds), and
the sink a followed redirect lands on."""

from __future__ import annotations

import time
from email.utils import formatdate

from .constants import API_PREFIX, CR_RE, EMU_PREFIX, UPLOAD_ID_RE
from .framing import REASONS, Abort

STREAM_BLOCK = 1 << 16  # huge_body is written in blocks of this size from one buffer


def html_error_page(status: int) -> bytes:
    """The page a reverse proxy in front of the API answers with."""
    title = f"{status} {REASONS.get(status, 'Error')}"
    return (f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>"
            f"<body><center><h1>{title}</h1></center><hr><center>nginx</center></body></html>\n").encode()


def padding_json(size: int):
    """`size` bytes of what looks like an answer ({"received":0,"padding":"xxx…"}; only x's when
    `size` is too small for that), as blocks of one shared buffer."""
    head, tail = b'{"received":0,"padding":"', b'"}'
    if size < len(head) + len(tail):
        head = tail = b""
    fill = memoryview(b"x" * STREAM_BLOCK)
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        n = min(left, STREAM_BLOCK)
        yield fill[:n]
        left -= n
    yield tail


def slow_json(n: int, answer: bytes, step: float):
    """`answer` behind JSON whitespace, `n` bytes in all, one byte every `step` seconds.
    A thread per connection: the sleeps hold up only this client."""
    pad = n - len(answer)
    for i in range(n):
        time.sleep(step)
        yield b" " if i < pad else answer[i - pad : i - pad + 1]


class FaultReplies:
    """Handler mixin: the answers of the terminal faults and of the modifiers that touch state."""

    def apply_fault(self, k, d, endpoint, args):
        self.emu.count(self.command, endpoint, "fault:" + k)
        rule = d.rule
        if k in ("error_500", "error_502", "error_503"):
            return self.respond(int(k[-3:]), {"error": "internal_error"})
        if k == "rate_limit_burst":
            return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", str(d.retry_after))])
        if k == "retry_after_none":
            return self.respond(429, {"error": "rate_limited"})
        if k == "retry_after_date":
            when = formatdate(time.time() + rule["retry_after"], usegmt=True)
            return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", when)])
        if k == "retry_after_huge":
            return self.respond(429, {"error": "rate_limited"}, headers=[("Retry-After", str(rule["retry_after"]))])
        if k == "html_error":
            status = rule["status"]
            if rule.get("early"):
                return self.respond_then_reset(status, raw=html_error_page(status), ctype="text/html; charset=utf-8")
            return self.respond(status, raw=html_error_page(status), ctype="text/html; charset=utf-8")
        if k == "slow_loris":
            answer = b'{"error":"internal_error"}'
            n = max(len(answer), round(rule["duration"] / rule["seconds"]))
            return self.respond_stream(503, n, slow_json(n, answer, rule["seconds"]))
        if k == "huge_body":
            return self.respond_stream(200, rule["size"], padding_json(rule["size"]))
        if k == "redirect":
            return self.respond(307, raw=b"", ctype="text/html", headers=[("Location", self._redirect_to(rule))])
        if k == "invalid_json":
            return self.respond(200, raw=b'{"received": 12, "total": <html>not json')
        if k == "cut_body":
            if endpoint == "put_file" and self._body_left > 0 and not self._chunked:
                self._send_continue()
                n = min(self._body_left // 2, 1 << 20)
                if n:
                    buf = self._buffers()[0]
                    buf.settle()  # the body worker may still be hashing the last PUT out of it
                    self._read_into(buf.mv[:n])
            raise Abort(True)
        if k == "received_gt_total":
            total = self._fault_total(endpoint, args)
            return self.respond(200, {"received": total + 1, "total": total, "complete": True})
        if k == "missing_fields":
            body = {
                "open_session": {"expires_in_seconds": self.emu.flag("session_lifetime")},
                "put_file": {"total": self._fault_total(endpoint, args)},
                "get_file": {"total": self._fault_total(endpoint, args)},
                "get_session": {"files": []},
                "delete_session": {},
                "create_project": {"status": 0, "message": "processing_started"},
                "get_project": {"name": args[0] if args else ""},
                "list_projects": {},
            }[endpoint]
            return self.respond(200, body)
        return self.respond(500, {"error": "internal_error"})

    def _redirect_to(self, rule) -> str:
        """The redirect fault's Location: the rule's, or this emulator's sink under another host name."""
        path = self.path if self.path.startswith("/") else self._request_path()
        loc = rule["location"]
        if loc is None:
            host, port = self.server.server_address[:2]
            other = "localhost" if host == "127.0.0.1" else "127.0.0.1"
            scheme = "http" if self._plain else "https"
            return f"{scheme}://{other}:{port}{EMU_PREFIX}/redirected{path}"
        return loc.replace("{path}", path)

    def _rollback_received(self, args, fraction):
        """rollback_received fault: the server loses the tail of an incomplete file."""
        emu = self.emu
        upload_id, raw_name = args
        name = emu.profile.flatten(raw_name)
        if name is None or not UPLOAD_ID_RE.match(upload_id):
            return
        # One statement, no file lock: a PUT racing with it may win, as on a real server.
        emu.store.run("UPDATE files SET received=CAST(received * ? AS INTEGER) WHERE upload_id=? AND name=?"
                      " AND complete=0", (fraction, upload_id, name))

    def _fault_total(self, endpoint, args):
        if endpoint == "put_file":
            cr = self.headers.get("Content-Range")
            if cr:
                mm = CR_RE.match(cr.strip())
                if mm and mm.group(3) != "*":
                    return int(mm.group(3))
            return self._content_length or 0
        name = self.emu.profile.flatten(args[1]) if len(args) > 1 else None
        if name and UPLOAD_ID_RE.match(args[0]):
            row = self.emu.store.one("SELECT total FROM files WHERE upload_id=? AND name=?", (args[0], name))
            if row:
                return row["total"]
        return 0

    def redirected(self, path):
        """The sink a followed redirect fault lands on: it answers 200 (for a file: complete,
        though nothing is stored) and records that a client trusted another host."""
        emu = self.emu
        m = self.command
        sent = "with" if self.headers.get("Authorization") else "without"
        emu.violation("redirect_followed", None, None,
                      f"{m} {path[:200]} followed a redirect to another host, {sent} the Authorization header")
        emu.count(m, "redirected", 200)
        parts = path[len(API_PREFIX) + 1:].split("/", 2) if path.startswith(API_PREFIX + "/") else []
        if len(parts) == 3 and parts[0] == "uploads" and m in ("PUT", "GET"):
            total = self._fault_total("put_file" if m == "PUT" else "get_file", (parts[1], parts[2]))
            return self.respond(200, {"received": total, "total": total, "complete": True})
        return self.respond(200, {"redirected": True})
