"""Persistent state of the emulator: SQLite (WAL) metadata plus one blob file
per uploaded file under ``<data-dir>/blobs``.

Durability rule: a file's ``received`` is only advanced in the database after
its bytes have been written with ``os.pwrite`` (they are then in the page
cache, which survives a SIGKILL of the emulator).  Nothing is fsynced: the
emulator models process crashes, not power loss.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    upload_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    upload_id TEXT NOT NULL,
    name TEXT NOT NULL,
    total INTEGER NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    overwritten INTEGER NOT NULL DEFAULT 0,
    put_count INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    UNIQUE (upload_id, name)
);
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    upload_id TEXT,
    download_link TEXT,
    title TEXT NOT NULL,
    privacy_mode INTEGER NOT NULL,
    created REAL NOT NULL,
    processing_seconds REAL NOT NULL,
    record TEXT NOT NULL,
    create_count INTEGER NOT NULL DEFAULT 1,
    discarded_status INTEGER,
    poll_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS projects_upload ON projects (upload_id);
"""


class Store:
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.blob_dir = os.path.join(data_dir, "blobs")
        os.makedirs(self.blob_dir, exist_ok=True)
        self.lock = threading.Lock()
        # upload_id -> the sum of its files' totals (they never change once made), summed from the
        # database once per session and kept up to date: a new file's check against the session's
        # cap would otherwise read every file of the session (100,000 files: minutes).
        self._session_bytes: dict[str, int] = {}
        self.db = sqlite3.connect(
            os.path.join(data_dir, "emulator.sqlite3"),
            check_same_thread=False,
            isolation_level=None,
            timeout=30,
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        # A data dir from before discarded_status (the vendor profile's DELETE) gets the column.
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(projects)")}
        if "discarded_status" not in cols:
            self.db.execute("ALTER TABLE projects ADD COLUMN discarded_status INTEGER")
        if "poll_count" not in cols:
            self.db.execute("ALTER TABLE projects ADD COLUMN poll_count INTEGER NOT NULL DEFAULT 0")

    # -- generic helpers -------------------------------------------------
    def all(self, sql, args=()):
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def one(self, sql, args=()):
        with self.lock:
            return self.db.execute(sql, args).fetchone()

    def run(self, sql, args=()):
        with self.lock:
            cur = self.db.execute(sql, args)
            return cur.lastrowid

    def close(self):
        with self.lock:
            try:
                self.db.close()
            except Exception:
                pass

    # -- blobs -----------------------------------------------------------
    def blob_path(self, file_id: int) -> str:
        return os.path.join(self.blob_dir, f"{file_id}.bin")

    def open_blob(self, file_id: int) -> int:
        return os.open(self.blob_path(file_id), os.O_RDWR | os.O_CREAT, 0o600)

    def remove_blob(self, file_id: int) -> None:
        try:
            os.unlink(self.blob_path(file_id))
        except FileNotFoundError:
            pass

    # -- sessions --------------------------------------------------------
    def session(self, upload_id):
        return self.one("SELECT * FROM sessions WHERE upload_id=?", (upload_id,))

    def create_file(self, upload_id, name, total, session_cap) -> int | None:
        """A new file's id, or None when the session's totals would pass session_cap.
        One lock hold, so two new files of one session cannot both slip under the cap."""
        with self.lock:
            other = self._session_bytes.get(upload_id)
            if other is None:
                other = self.db.execute("SELECT COALESCE(SUM(total),0) FROM files WHERE upload_id=?",
                                        (upload_id,)).fetchone()[0]
            if other + total > session_cap:
                return None
            file_id = self.db.execute("INSERT INTO files (upload_id, name, total, created) VALUES (?,?,?,?)",
                                      (upload_id, name, total, time.time())).lastrowid
            self._session_bytes[upload_id] = other + total
            return file_id

    def purge_session(self, upload_id) -> list[int]:
        """Delete a session, its file rows and blobs. Returns the file ids."""
        with self.lock:
            ids = [r[0] for r in self.db.execute("SELECT id FROM files WHERE upload_id=?", (upload_id,))]
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM files WHERE upload_id=?", (upload_id,))
            self.db.execute("DELETE FROM sessions WHERE upload_id=?", (upload_id,))
            self.db.execute("COMMIT")
            self._session_bytes.pop(upload_id, None)
        for i in ids:
            self.remove_blob(i)
        return ids

    def wipe(self):
        with self.lock:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM files")
            self.db.execute("DELETE FROM sessions")
            self.db.execute("DELETE FROM projects")
            self.db.execute("COMMIT")
            self._session_bytes.clear()
        shutil.rmtree(self.blob_dir, ignore_errors=True)
        os.makedirs(self.blob_dir, exist_ok=True)
