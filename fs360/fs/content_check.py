"""Whether a re-copy of a file the server holds (or of a frozen tree's file) is identical:
compared, never stored.

Re-running a copy rewrites every file with the same bytes; that is accepted (the server
already holds them). The first byte that differs is refused: the server cannot replace it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..engine.content_digest import is_legacy_digest
from ..engine.records import IN_TREE, FileRecord
from ..engine.spool import RunningDigest


def held_with_known_content(record: FileRecord) -> bool:
    """The server may hold it and the journal knows its content digest (kept in the `sha256`
    field, see content_digest.py): a rewrite can be compared."""
    return not record.local_only and record.may_be_on_server and bool(record.sha256)


def compared_on_rewrite_locked(engine, record: FileRecord) -> bool:
    """A rewrite of `record` is only compared with what it holds: the server holds it, or it is a
    file of a frozen tree (it goes, or went, up inside the archive as it is), and its digest is known."""
    if held_with_known_content(record):
        return True
    return record.state == IN_TREE and bool(record.sha256) and engine.registry.session_of(record).tree_frozen


@dataclass(frozen=True)
class LegacyDigest:
    """A copy's sha256, read off the lock for a held file whose journal has a plain sha256 (an
    earlier build's), and the copy's size and mtime when it was read (a write since makes it stale)."""
    value: str
    stamp: tuple[int, int]


def content_stamp(record: FileRecord) -> tuple[int, int]:
    return record.size, record.mtime_ns


def is_identical_copy(engine, copy: FileRecord, held: FileRecord, legacy: LegacyDigest | None = None) -> bool:
    """A finished local copy (rsync's `.name.XXXXXX`) with exactly the bytes the server holds.
    Asked with the state lock held: the copy's digest must be known (renames.py hashes it first,
    off the lock, and reads `legacy` for a held file of an earlier build); one that is not
    (written again since) does not count as identical."""
    if copy.unfinished or copy.size != held.size:
        return False
    if is_legacy_digest(held.sha256):
        return legacy is not None and legacy.stamp == content_stamp(copy) and legacy.value == held.sha256
    return engine.registry.known_digest(copy, like=held.sha256) == held.sha256


@dataclass(eq=False)
class ContentCheck:
    """A file the server holds, opened for writing. Opened with O_TRUNC (or truncated to 0
    later, as GIO does), the new content is compared by its digest at close (of the kind of
    `expected_digest`); before that, writes in place are compared with the spool copy."""
    expected_size: int
    expected_digest: str
    rewriting: bool
    digest: RunningDigest | None = None
    size: int = 0
    differs: bool = False
    # Written or truncated through since it was opened: a close before that decides nothing (a
    # shell's `cat x > f` and dd close a first descriptor of the file before writing).
    touched: bool = False

    def __post_init__(self):
        self.digest = RunningDigest(like=self.expected_digest)
        if not self.rewriting:
            self.size = self.expected_size  # untouched so far: the content is the server's

    def restart(self) -> None:
        """Truncated to 0: a rewrite from the first byte begins."""
        self.rewriting, self.size, self.digest = True, 0, RunningDigest(like=self.expected_digest)

    def compare_write(self, spool_fd: int, data: bytes, offset: int) -> bool:
        """Takes a write at `offset` (`spool_fd` is the spool copy, -1 when it is gone);
        whether the content still matches."""
        self.touched = True
        if not self.differs:
            end = offset + len(data)
            same = end <= self.expected_size
            if same and spool_fd >= 0:
                same = os.pread(spool_fd, len(data), offset) == data
            if self.rewriting:
                self.digest.add(offset, data)
                self.size = max(self.size, end)
            # Without the spool copy only a front-to-back rewrite can be compared (by its digest).
            self.differs = not same or (spool_fd < 0 and not (self.rewriting and self.digest.valid))
        return not self.differs

    def compare_truncate(self, length: int) -> bool:
        """Takes a truncate to `length`; whether the content still matches."""
        self.touched = True
        if length == 0:
            self.restart()
        elif length != self.size:
            return False
        return True

    def matches(self) -> bool:
        if self.differs or self.size != self.expected_size:
            return False
        return not self.rewriting or self.digest.hexdigest(self.size) == self.expected_digest
