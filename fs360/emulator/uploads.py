"""The upload endpoints: open, inspect and delete a session, PUT and GET a file."""

from __future__ import annotations

import os
import time

from .constants import CR_RE, UPLOAD_ID_RE, error_body
from .framing import Abort, to_stderr
from .pipeline import SEG, PutHash, RunningHash, StorageError, pwrite_all
from .profiles import extension_of


class UploadEndpoints:
    """Handler mixin: POST /uploads, GET and DELETE /uploads/{id}, PUT and GET /uploads/{id}/{name}."""

    def open_session(self):
        emu = self.emu
        if emu.flag("quota_exceeded"):
            return self.error(402, "storage_quota_exceeded")
        if emu.flag("tariff_forbids_upload"):
            return self.error(403, "tariff_forbids_upload")
        lifetime = emu.flag("session_lifetime")
        now = time.time()
        for _ in range(100):
            uid = emu.new_id()
            if emu.store.session(uid) is None and emu.store.one("SELECT 1 FROM projects WHERE name=?", (uid,)) is None:
                break
        emu.store.run("INSERT INTO sessions (upload_id, created, expires_at) VALUES (?,?,?)", (uid, now, now + lifetime))
        self.respond(201, {"upload_id": uid, "expires_in_seconds": emu.profile.expires_in(lifetime)})

    def _session_or_error(self, upload_id):
        if not UPLOAD_ID_RE.match(upload_id):
            self.error(400, "invalid_upload_id")
            return None
        s = self.emu.live_session(upload_id)
        if s is None:
            self.error(404, "upload_session_not_found")
        return s

    def get_session(self, upload_id):
        if self._session_or_error(upload_id) is None:
            return
        rows = self.emu.store.all("SELECT * FROM files WHERE upload_id=? ORDER BY id", (upload_id,))
        with self.emu.file_locks_lock:
            for r in rows:
                self.emu.after409.pop((upload_id, r["name"]), None)
        files = [
            {"name": r["name"], "received": r["received"], "total": r["total"], "complete": bool(r["complete"])}
            for r in rows
        ]
        self.respond(200, {"upload_id": upload_id, "files": files})

    def delete_session(self, upload_id):
        if not UPLOAD_ID_RE.match(upload_id):
            return self.error(400, "invalid_upload_id")
        if self.emu.profile.delete_discards_projects:
            self.emu.discard_projects_of(upload_id)
        self.emu.purge(upload_id)
        self.respond(200, {"deleted": True})

    def get_file(self, upload_id, raw_name):
        if self._session_or_error(upload_id) is None:
            return
        name = self.emu.profile.flatten(raw_name)
        if name is None:
            return self.error(400, "invalid_filename")
        row = self.emu.store.one("SELECT * FROM files WHERE upload_id=? AND name=?", (upload_id, name))
        if row is None:
            return self.error(404, "file_not_found")
        with self.emu.file_locks_lock:
            self.emu.after409.pop((upload_id, name), None)
        self.respond(200, {"received": row["received"], "total": row["total"], "complete": bool(row["complete"])})

    def put_file(self, upload_id, raw_name):
        emu = self.emu
        if self._session_or_error(upload_id) is None:
            return
        name = self.emu.profile.flatten(raw_name)
        if name is None:
            return self.error(400, "invalid_filename")
        ext = extension_of(name)
        if ext not in emu.allowed_set:
            return self.error(415, "extension_not_allowed", extension=ext, allowed=list(emu.allowed))
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/octet-stream":
            return self.error(400, "invalid_content_type")
        if self._chunked or self._content_length is None:
            return self.error(411, "length_required")
        length = self._content_length
        cr = self.headers.get_all("Content-Range")
        if cr is None:
            start, end, total = 0, length - 1, length
        else:
            mm = CR_RE.match(cr[0].strip()) if len(cr) == 1 else None
            if mm is None or mm.group(3) == "*":
                return self.error(400, "invalid_content_range")
            start, end, total = int(mm.group(1)), int(mm.group(2)), int(mm.group(3))
            if start > end or end >= total:
                return self.error(400, "invalid_content_range")
            if length != end - start + 1:
                return self.error(400, "chunk_length_mismatch")
        max_file = emu.flag("max_file_size")
        if total > max_file:
            return self.error(413, "file_too_large", limit=max_file)
        key = (upload_id, name)
        lock = emu.file_lock(key)
        waited = not lock.acquire(blocking=False)
        if waited:
            emu.violation("concurrent_put", upload_id, name, f"PUT bytes {start}-{end}/{total} while another PUT to the file was in flight")
            lock.acquire()
        try:
            if waited and emu.live_session(upload_id) is None:  # deleted/expired while waiting
                status, body = 404, error_body("upload_session_not_found")
            else:
                status, body = self._put_locked(upload_id, name, key, start, end, total, length)
        finally:
            lock.release()
        # Answered only once the file is free again: a client that sends the next
        # chunk the moment it reads this answer must not find the file still held.
        self.respond(status, body)

    def _put_locked(self, upload_id, name, key, start, end, total, length):
        """Does the PUT with the file's lock held; returns the answer (status, body)."""
        emu = self.emu
        store = emu.store
        row = store.one("SELECT * FROM files WHERE upload_id=? AND name=?", (upload_id, name))
        if row is None:
            # A file's total is fixed when it is created: the session cap is checked once, here.
            # The per-file lock held by put_file makes this the only creator of (upload_id, name).
            max_sess = emu.flag("max_session_size")
            fid = store.create_file(upload_id, name, total, max_sess)
            if fid is None:
                return 413, error_body("session_too_large", limit=max_sess)
            row = {"id": fid, "received": 0, "complete": 0, "total": total}
        fid = row["id"]
        store.run("UPDATE files SET put_count=put_count+1 WHERE id=?", (fid,))
        with emu.file_locks_lock:
            given = emu.after409.pop(key, None)
        if given is not None and start != given:
            emu.violation(
                "gap_after_409", upload_id, name,
                f"PUT starts at {start} after a 409 that said received={given} (no GET in between)",
            )
        received = row["received"]
        if row["complete"]:
            return 200, {"received": received, "total": row["total"], "complete": True}
        if row["total"] != total:
            return 400, error_body("invalid_content_range")
        if start > received:
            with emu.file_locks_lock:
                emu.after409[key] = received
            return 409, error_body("non_contiguous_chunk", received=received)

        # -- accept the body --
        rh = emu.hashes.get(fid)
        if rh is None and received == 0 and emu.discard and emu.cfg.sha256:
            rh = emu.hashes[fid] = RunningHash()
        if rh is not None and rh.upto != received:  # a gap the hash cannot cover
            emu.hashes.pop(fid, None)
            rh = None
        # A body of one segment is handled inline (worker None): a hand-off to the
        # body worker and back costs more than the work for small files.  With
        # neither a blob nor a hash there is no body work at all.
        has_work = not emu.discard or rh is not None
        worker = self._body_worker() if length > SEG and has_work else None
        put_hash = None
        if rh is not None:
            put_hash = PutHash()
            if worker is not None and rh.last_worker is worker:
                worker.submit(put_hash.fork, rh)  # queued behind the previous PUT's commit
            else:  # inline, or the previous PUT came on another connection
                rh.settled()
                put_hash.fork(rh)
        try:
            self._accept_body(fid, start, length, received, put_hash, worker)
        except StorageError as e:
            to_stderr(f"emulator: cannot store a chunk of {name!r}: {e}\n")
            return 500, error_body("storage_error")
        new_received = max(received, end + 1)
        overlap = max(0, min(end + 1, received) - start)
        complete = new_received == total
        sha = None
        if put_hash is not None:
            if worker is None:
                put_hash.commit(rh)
            else:
                rh.last = worker.submit(put_hash.commit, rh)
                rh.last_worker = worker
            rh.upto = new_received
            if complete:
                rh.settled()
                sha = rh.h.hexdigest()
                emu.hashes.pop(fid, None)
        store.run(
            "UPDATE files SET received=?, complete=?, overwritten=overwritten+?, sha256=COALESCE(?, sha256) WHERE id=?",
            (new_received, 1 if complete else 0, overlap, sha, fid),
        )
        return 200, {"received": new_received, "total": total, "complete": complete}

    def _accept_body(self, fid, start, length, received, put_hash, worker):
        """Read the body into the buffers and hand each segment to the blob and
        the running hash, through `worker` or inline if it is None.  Returns
        once every byte is written."""
        try:
            fd = -1 if self.emu.discard else self.emu.store.open_blob(fid)
        except OSError as e:
            raise StorageError(f"{e.strerror or e}") from None
        bufs = self._buffers()
        try:
            self._send_continue()
            off = start
            left = length
            i = 0
            while left > 0:
                buf = bufs[i % len(bufs)]
                i += 1
                buf.settle()
                n = min(left, SEG)
                mv = buf.mv[:n]
                got = self._read_into(mv)
                self.emu.arrived(got)
                if got < n:
                    raise Abort(False)  # short body: nothing committed
                if fd >= 0:
                    if worker is None:
                        pwrite_all(fd, mv, off)
                    else:
                        buf.op = worker.submit(pwrite_all, fd, mv, off)
                elif put_hash is not None and off + n > received:  # a running hash is kept only in --discard
                    lo = max(0, received - off)  # overlapping bytes are already hashed
                    if worker is None:
                        put_hash.update(mv[lo:])
                    else:
                        buf.op = worker.submit(put_hash.update, mv[lo:])
                off += n
                left -= n
            if fd >= 0:
                for buf in bufs:  # every byte is written before it is acknowledged
                    buf.settle()
        finally:
            if fd >= 0:
                for buf in bufs:  # no write may outlive the descriptor
                    try:
                        buf.settle()
                    except StorageError:
                        pass
                os.close(fd)
