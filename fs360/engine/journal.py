"""The journal: sessions, files and project requests in SQLite (WAL).

Each state change is one transaction. WAL with synchronous=NORMAL survives any
kill of the process; after a power loss the last transactions may be missing,
which is safe because every upload asks the server for its offset before it
goes on (the server is the truth).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path

from ..errors import JournalClosed, JournalUnwritable, NoSpace

log = logging.getLogger(__name__)

# Enough for thousands of journal changes (a WAL frame is one 4 KiB page).
RESERVE_BYTES = 4 * 1024 * 1024
# WAL pages after which a commit checkpoints by itself (housekeeping normally does it first).
AUTOCHECKPOINT_PAGES = 8000

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    upload_id TEXT,
    expires_at REAL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sealed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL DEFAULT 0,
    gid INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    server_received INTEGER NOT NULL DEFAULT 0,
    upload_id TEXT,
    last_error TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    completed_at REAL NOT NULL DEFAULT 0,
    evicted INTEGER NOT NULL DEFAULT 0,
    unlinked INTEGER NOT NULL DEFAULT 0,
    server_name TEXT,
    sha256 TEXT
);
CREATE INDEX IF NOT EXISTS files_by_session ON files(session_id);
CREATE TABLE IF NOT EXISTS projects (
    session_id INTEGER PRIMARY KEY,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    name TEXT,
    status INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL DEFAULT '{}',
    last_error TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    posted_upload_id TEXT,
    marker_hidden INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Folders inside a session, at any depth: dot-directories (and what is below them) are local
# scratch, kept so that rsync --partial-dir finds its partial files after a remount; the
# others are the session's tree, uploaded as one archive at .create.
DIRS_SCHEMA = """
CREATE TABLE IF NOT EXISTS dirs (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    UNIQUE (session_id, path)
);
"""

FILE_COLUMNS = ("session_id", "name", "size", "mode", "uid", "gid", "mtime_ns", "state", "server_received",
                "upload_id", "last_error", "attempts", "next_attempt", "completed_at", "evicted", "unlinked",
                "server_name", "sha256", "archive", "unfinished", "writers", "prefix_whole")
# Columns added after the first release: (table, column, SQL type). A journal of an
# older build gets them at open, so its sessions resume instead of failing.
# `archive`: the row is the session's tree as one .zip (records.FileRecord.archive).
# `unfinished`: why the content is not whole (records.FileRecord.unfinished).
# `writers`: a closed file's awaited writers (engine/processes.py), to resume its commit point.
# `prefix_whole`: every byte of the file was written, front to back (records.FileRecord).
# `uid`, `gid` of sessions and dirs: who made the folder (on a shared mount, allow_other);
# NULL: the mount's owner.
# `posted_at`, `listed_before` of projects: when the POST was sent and the names listed just
# before it (JSON), so that after a restart a lost answer's project is told from older ones.
# `marker`, `marker_mtime_ns` of projects: the .create as accepted and its mtime (NULL: an older
# build's request, whose .create reads back rendered).
ADDED_COLUMNS = (("files", "server_name", "TEXT"), ("files", "sha256", "TEXT"),
                 ("files", "archive", "INTEGER NOT NULL DEFAULT 0"),
                 ("files", "unfinished", "TEXT NOT NULL DEFAULT ''"),
                 ("files", "writers", "TEXT NOT NULL DEFAULT ''"),
                 ("sessions", "uid", "INTEGER"), ("sessions", "gid", "INTEGER"),
                 ("dirs", "uid", "INTEGER"), ("dirs", "gid", "INTEGER"),
                 ("projects", "posted_at", "REAL"), ("projects", "listed_before", "TEXT"),
                 ("files", "prefix_whole", "INTEGER NOT NULL DEFAULT 1"),
                 ("projects", "marker", "BLOB"), ("projects", "marker_mtime_ns", "INTEGER"))
SESSION_COLUMNS = ("name", "upload_id", "expires_at", "mode", "mtime_ns", "sealed", "uid", "gid")
DIR_COLUMNS = ("session_id", "path", "mode", "mtime_ns", "uid", "gid")
PROJECT_COLUMNS = ("options", "state", "name", "status", "record", "last_error", "attempts", "next_attempt",
                   "posted_upload_id", "marker_hidden", "posted_at", "listed_before", "marker", "marker_mtime_ns")
_INSERT_FILE = (f"INSERT INTO files ({','.join(('id',) + FILE_COLUMNS)}) "
                f"VALUES ({','.join('?' * (1 + len(FILE_COLUMNS)))})")


class Journal:
    """One connection, one lock: writes are small and the lock makes each one atomic."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self._path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._closed = False
        self._last_file_id: int | None = None  # the highest file id ever handed out (insert_file)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run from housekeeping (`checkpoint`), not inside a commit that a caller
            # holding the engine's state lock waits for; this is only the backstop.
            self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            self._db.executescript(SCHEMA)
            self._db.executescript(DIRS_SCHEMA)
            self._add_missing_columns_locked()
        # Space held back for the journal alone: when the disk fills up (the spool
        # shares it), the journal gives this back and can still record every change.
        self._reserve = path.with_name(path.name + ".reserve")
        # Row updates the full disk refused even with the reserve gone: (table, key column,
        # key) -> the columns to set. Kept in memory, written once there is room again.
        self._behind: dict[tuple[str, str, object], dict] = {}
        self._behind_lock = threading.Lock()  # taken alone or inside _lock, never around it
        self.restore_reserve()

    def _add_missing_columns_locked(self) -> None:
        for table, column, sql_type in ADDED_COLUMNS:
            present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

    def checkpoint(self) -> None:
        """Copies the WAL into the database on a connection of its own: a PASSIVE checkpoint
        neither takes this journal's lock nor blocks its writers."""
        try:
            with contextlib.closing(sqlite3.connect(str(self._path), timeout=1.0)) as db:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # busy or a full disk: the next round tries again
            log.debug("journal checkpoint skipped: %s", exc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _write(self, sql: str, args=()) -> int:
        with self._lock:
            return self._with_room_locked(lambda: self._db.execute(sql, args).lastrowid)

    def _with_room_locked(self, operation):
        """Needs self._lock held. Runs `operation`; on a full disk, frees the reserve and runs it
        again. Whatever fails, no transaction is left open (a later write would join it, and
        never be committed)."""
        if self._closed:
            raise JournalClosed("the mount has stopped: this change is not recorded (the next mount asks the "
                                "server where the file stands)")
        try:
            return self._rolled_back_on_error_locked(operation)
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc):
                raise
        if not self._release_reserve():
            raise NoSpace("the cache disk is full: the journal cannot record the change")
        log.warning("the cache disk is full: the journal uses its reserve")
        try:
            return self._rolled_back_on_error_locked(operation)
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc):
                raise
        raise NoSpace("the cache disk is full even without the journal's reserve: the journal cannot record "
                      "the change")

    def _unwritable(self, exc: sqlite3.Error) -> JournalUnwritable:
        return JournalUnwritable(f"fs360 cannot write its journal in {self._path.parent} ({exc}): the disk of the "
                                 f"cache dir is read-only or failing; the files wait, nothing is lost from "
                                 f"memory; fix the disk (then unmount and mount again)")

    def _rolled_back_on_error_locked(self, operation):
        """`operation()`, its transaction rolled back if it fails; a disk that refuses writes (read-only,
        failing) is said as JournalUnwritable, whichever write met it."""
        try:
            try:
                return operation()
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            if _disk_failing(exc):
                raise self._unwritable(exc) from None
            raise

    def _release_reserve(self) -> bool:
        try:
            os.unlink(self._reserve)
            return True
        except FileNotFoundError:
            return False

    def restore_reserve(self) -> None:
        """Puts the reserve back once there is room again, and writes what waited for room
        (called by housekeeping)."""
        if self._behind:
            self._write_behind()
        if self._reserve.exists():
            return
        st = os.statvfs(self._reserve.parent)
        # A small disk gets a small reserve: 1/16 of it, at most RESERVE_BYTES.
        size = min(RESERVE_BYTES, st.f_blocks * st.f_frsize // 16)
        if size <= 0 or st.f_bavail * st.f_frsize < 2 * size:
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError:
            os.close(fd)
            self._release_reserve()
            return
        os.close(fd)

    def _read(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- sessions ------------------------------------------------------------------

    def insert_session(self, values: dict) -> int:
        return self._write(f"INSERT INTO sessions ({','.join(SESSION_COLUMNS)}) VALUES "
                           f"({','.join('?' * len(SESSION_COLUMNS))})",
                           # uid/gid: NULL for a folder made by the mount's owner (see ADDED_COLUMNS).
                           [values.get(c) if c in ("uid", "gid") else values[c] for c in SESSION_COLUMNS])

    def update_session(self, session_id: int, **values) -> None:
        self._update("sessions", "id", session_id, SESSION_COLUMNS, values)

    def delete_session(self, session_id: int) -> None:
        with self._lock:
            def delete():
                self._db.execute("BEGIN")
                self._delete_files_locked("DELETE FROM files WHERE session_id=?", (session_id,))
                self._db.execute("DELETE FROM projects WHERE session_id=?", (session_id,))
                self._db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
                self._db.execute("COMMIT")
            self._with_room_locked(delete)

    def sessions(self) -> list[sqlite3.Row]:
        return self._read("SELECT * FROM sessions ORDER BY id")

    # --- files -----------------------------------------------------------------------

    def insert_file(self, values: dict) -> int:
        """A new file row under an id never used before in this journal: a deleted file's id
        (which SQLite would hand out again) may still be known to an open handle or a worker,
        whose late writes must not land on a new file's row, nor its reads on a new spool file.
        The highest id handed out is kept in memory, and in `meta` by each delete (the only
        change that can take it out of the table): the insert itself is one statement."""
        with self._lock:
            file_id = self._highest_file_id_locked() + 1
            row = [file_id] + [values[c] for c in FILE_COLUMNS]
            self._with_room_locked(lambda: self._db.execute(_INSERT_FILE, row))
            self._last_file_id = file_id  # only once written: a failed insert used no id
            return file_id

    def _highest_file_id_locked(self) -> int:
        if self._last_file_id is None:  # read once: this journal has one writer, this one
            last = self._db.execute("SELECT value FROM meta WHERE key='last_file_id'").fetchone()
            highest = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM files").fetchone()[0]
            self._last_file_id = max(int(last[0]) if last else 0, highest)
        return self._last_file_id

    def _delete_files_locked(self, sql: str, args) -> None:
        """Needs self._lock held and a transaction open: deletes file rows, keeping the highest id
        ever handed out in `meta` in the same transaction (a restart must not hand it out again)."""
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_file_id', ?)",
                         (str(self._highest_file_id_locked()),))
        self._db.execute(sql, args)

    def update_file(self, file_id: int, **values) -> None:
        self._update("files", "id", file_id, FILE_COLUMNS, values)

    def delete_file(self, file_id: int) -> None:
        with self._lock:
            def delete():
                self._db.execute("BEGIN")
                self._delete_files_locked("DELETE FROM files WHERE id=?", (file_id,))
                self._db.execute("COMMIT")
            self._with_room_locked(delete)

    def files(self) -> list[sqlite3.Row]:
        return self._read("SELECT * FROM files ORDER BY id")

    # --- scratch directories -----------------------------------------------------------

    def insert_dir(self, session_id: int, path: str, mode: int, mtime_ns: int, uid: int | None = None,
                   gid: int | None = None) -> int:
        return self._write(f"INSERT INTO dirs ({','.join(DIR_COLUMNS)}) VALUES ({','.join('?' * len(DIR_COLUMNS))})",
                           (session_id, path, mode, mtime_ns, uid, gid))

    def update_dir(self, dir_id: int, **values) -> None:
        self._update("dirs", "id", dir_id, DIR_COLUMNS, values)

    def delete_dir(self, dir_id: int) -> None:
        self._write("DELETE FROM dirs WHERE id=?", (dir_id,))

    def delete_dirs_of(self, session_id: int) -> None:
        self._write("DELETE FROM dirs WHERE session_id=?", (session_id,))

    def dirs(self) -> list[sqlite3.Row]:
        return self._read("SELECT * FROM dirs ORDER BY path")

    # --- projects --------------------------------------------------------------------

    def upsert_project(self, session_id: int, values: dict) -> None:
        cols = ("session_id",) + PROJECT_COLUMNS
        row = [session_id] + [_column_value(values[c]) for c in PROJECT_COLUMNS]
        sql = f"INSERT OR REPLACE INTO projects ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
        with self._lock:
            self._with_room_locked(lambda: self._db.execute(sql, row))
            with self._behind_lock:
                # Every column is written: an update that waited for room is older, never to be written.
                self._behind.pop(("projects", "session_id", session_id), None)

    def update_project(self, session_id: int, **values) -> None:
        self._update("projects", "session_id", session_id, PROJECT_COLUMNS, values)

    def delete_project(self, session_id: int) -> None:
        self._write("DELETE FROM projects WHERE session_id=?", (session_id,))

    def projects(self) -> list[sqlite3.Row]:
        return self._read("SELECT * FROM projects")

    # --- meta (what the server taught us: caps, allowed extensions) ---------------------

    def get_meta(self, key: str, default=None):
        rows = self._read("SELECT value FROM meta WHERE key=?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def set_meta(self, key: str, value) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def _update(self, table: str, key: str, key_value, allowed: tuple, values: dict) -> None:
        """Sets columns of one row. On a disk too full even for the reserve, the change waits in
        memory and is written once there is room: an upload worker settling an error must
        never fail for the journal (the state it records is still right in memory)."""
        unknown = set(values) - set(allowed)
        if unknown:
            raise ValueError(f"unknown columns for {table}: {sorted(unknown)}")
        row = (table, key, key_value)
        # One hold of the journal's lock from taking what waited for this row to writing it or
        # putting it back: another update of the row between the two would be overwritten by
        # the older values (a `pending` over a newer `stopped while writing`).
        with self._lock:
            with self._behind_lock:
                waiting = self._behind.pop(row, None)
            if waiting:
                values = {**waiting, **values}  # the newest value of each column wins
            if not values:
                return
            assignments = ",".join(f"{c}=?" for c in values)
            sql = f"UPDATE {table} SET {assignments} WHERE {key}=?"
            args = [_column_value(v) for v in values.values()] + [key_value]
            try:
                self._with_room_locked(lambda: self._db.execute(sql, args))
            except NoSpace:
                with self._behind_lock:
                    if not self._behind:
                        log.warning("the cache disk is full: journal changes wait in memory until there is room")
                    self._behind[row] = values

    def _write_behind(self) -> None:
        with self._behind_lock:
            rows = list(self._behind)
        for row in rows:
            # An update with no new values: it takes and writes what waited for that row.
            self._update(*row, (), {})
            with self._behind_lock:
                if row in self._behind:
                    return  # still full: try again at the next round
        log.info("the cache disk has room again: the journal caught up")


def _disk_full(exc: sqlite3.OperationalError) -> bool:
    return "full" in str(exc).lower()


# SQLite's result codes that say the disk (not the statement, not a busy lock) refuses writes.
DISK_FAILING_CODES = ("SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_CANTOPEN", "SQLITE_NOTADB")


def _disk_failing(exc: sqlite3.DatabaseError) -> bool:
    return str(getattr(exc, "sqlite_errorname", "")).startswith(DISK_FAILING_CODES)


def _column_value(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value
