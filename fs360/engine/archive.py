"""A session's folder tree as one stored .zip, generated from the spool files as it is read.

The server takes one archive per session and unpacks it (api.md), so a tree goes up
as a single `.zip` that is never written to disk: `ArchiveReader` produces its bytes
on demand, at any offset, from the members' spool files.

What makes the archive resumable (an upload goes on from the server's `received`
after any failure or restart, possibly in a new process) is that it is
**deterministic**: the same members give the same bytes and the same size, always.
- Entries are sorted by their name in the archive.
- Every entry is stamped 1980-01-01 00:00:00 (the ZIP format's first date), not the
  file's mtime: a `touch` after `.create`, or a different time zone after a restart,
  must not change bytes that are already on the server. The server's unpacker does
  not keep dates anyway.
- Files are 0644, empty folders 0755, no extended timestamps; UTF-8 names flag set.
- Entries are stored (scans and photos are already compressed), each with its size
  and CRC-32 in its local header, so even a streaming unzipper reads it.
- ZIP64 records only when the archive could pass 4 GiB or 65535 entries (or when
  asked to, `force_zip64`): then every entry has them.

The records are written here, directly (APPNOTE.TXT 4.3: local header, data, central
directory, ZIP64 end records, end record), byte for byte as the stream_zip library wrote
them before (an upload begun then resumes with these bytes). Every record has a size
known from the names alone, so the layout (where each entry's header and data lie, and
the central directory) and the archive's size come before any data is read, and any byte
is produced where it lies: a header from its member's CRC, data straight from the spool
file, the central directory from every CRC. Resumable by construction: no stream is run
up to an offset.

Cost of reading: an entry's CRC-32 goes in its local header, so a file is read once for
its CRC when its header is first produced, and once more (from the page cache: it was
just read) as its data goes out. The central directory needs every CRC, so a fresh reader
(new process, restart) resuming deep in the archive reads the files before it once for
their CRCs, and nothing else.
"""

from __future__ import annotations

import bisect
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import Iterable

from .server_names import deduplicated, server_name_for

FILE_MODE = stat.S_IFREG | 0o644
DIRECTORY_MODE = stat.S_IFDIR | 0o755
# 1980-01-01 00:00:00 in MS-DOS time and date fields (seconds/2, minutes, hours; day, month, years since 1980).
DOS_TIME, DOS_DATE = 0, 1 | 1 << 5
# Above either, plain ZIP fields overflow: the archive needs ZIP64 records.
ZIP32_MAX_OFFSET = 0xFFFFFFFF
ZIP32_MAX_ENTRIES = 0xFFFF
# How much a CRC pass reads from a spool file at a time.
BLOCK_SIZE = 1 << 20
# Spool files opened from their paths at once, at most.
MAX_OPEN_FILES = 16

UTF8_NAMES = 0x0800  # general purpose flag bit 11: names are UTF-8
UNIX = 3  # "version made by" host: external attributes hold the Unix mode in their high 16 bits
MSDOS_DIRECTORY = 0x10
ZIP64_EXTRA_ID = 0x0001
# signature, version needed, flags, method, time, date, CRC-32, compressed size, size, name length, extra length
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
# signature, version made by, its host, version needed, reserved, flags, method, time, date, CRC-32,
# compressed size, size, name length, extra length, comment length, disk, internal and external
# attributes, local header offset
CENTRAL_HEADER = struct.Struct("<4sBBBBHHHHIIIHHHHHII")
ZIP64_LOCAL_EXTRA = struct.Struct("<HHQQ")  # id, data size, size, compressed size
ZIP64_CENTRAL_EXTRA = struct.Struct("<HHQQQ")  # id, data size, size, compressed size, local header offset
# signature, record size after this field, version made by, version needed, disk, disk of the
# directory, entries on this disk, entries, directory size, directory offset
ZIP64_END = struct.Struct("<4sQHHIIQQQQ")
ZIP64_LOCATOR = struct.Struct("<4sIQI")  # signature, disk of the ZIP64 end, its offset, disks
END = struct.Struct("<4sHHHHIIH")  # signature, disk, its directory's disk, entries here, entries, size, offset, comment
LOCAL_SIGNATURE, CENTRAL_SIGNATURE = b"PK\x03\x04", b"PK\x01\x02"
ZIP64_END_SIGNATURE, ZIP64_LOCATOR_SIGNATURE, END_SIGNATURE = b"PK\x06\x06", b"PK\x06\x07", b"PK\x05\x06"


class ArchiveSourceChanged(OSError):
    """A member's spool file no longer holds the bytes (or size) the archive was planned with."""


@dataclass(frozen=True)
class ArchiveMember:
    """One file of the tree, or an empty folder (a `path` ending in "/", no source).

    `path` is the local path relative to the session, with "/" separators, exactly as
    the program wrote it ("Scans/Фото 1.JPG"). `source` is the spool file: an open fd
    (read with pread, never closed here) or a path (opened when read)."""
    path: str
    source: int | str | os.PathLike | None = None
    size: int = 0

    @property
    def is_dir(self) -> bool:
        return self.path.endswith("/")


def archive_names(paths: Iterable[str]) -> dict[str, str]:
    """Local relative path → its name inside the archive. Every path component gets the
    server's name rules (`server_name_for`), de-duplicated case-insensitively among its
    siblings, where a name that is already server-safe keeps it. Folder paths end in "/"."""
    kinds: dict[str, bool] = {}  # local path without trailing "/" → is a folder
    requested = []
    for path in paths:
        parts = _components(path)
        requested.append(path)
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            is_dir = depth < len(parts) or path.endswith("/")
            if kinds.setdefault(prefix, is_dir) != is_dir:
                raise ValueError(f"{prefix!r} is both a file and a folder")
    if len(set(requested)) != len(requested):
        raise ValueError("the same path is listed twice")

    siblings: dict[str, list[str]] = {}
    for local in kinds:
        parent, _, name = local.rpartition("/")
        siblings.setdefault(parent, []).append(name)
    component: dict[str, str] = {}
    for parent, names in siblings.items():
        taken: set[str] = set()
        # Names the server keeps as they are claim them first; then in a fixed order.
        for name in sorted(names, key=lambda n: (server_name_for(n) != n, n)):
            chosen = deduplicated(server_name_for(name), taken)
            taken.add(chosen.lower())
            component[f"{parent}/{name}" if parent else name] = chosen

    def mapped(path: str) -> str:
        local = path.removesuffix("/")
        parts = local.split("/")
        names = [component["/".join(parts[:depth])] for depth in range(1, len(parts) + 1)]
        return "/".join(names) + ("/" if kinds[local] else "")

    return {path: mapped(path) for path in requested}


def _components(path: str) -> list[str]:
    parts = path.removesuffix("/").split("/") if isinstance(path, str) else [""]
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ValueError(f"not a relative path: {path!r}")
    return parts


@dataclass(frozen=True)
class _Segment:
    start: int
    length: int
    entry: int | None  # the entry whose local header or data this is; None: the central directory
    data: bool = False

    @property
    def end(self) -> int:
        return self.start + self.length


class ArchiveReader:
    """The archive of `members`, readable at any offset. Not thread-safe: one per upload.

        reader = ArchiveReader(members)
        reader.size                       # known before any data is read
        reader.names                      # local path → name inside the archive
        reader.read_exactly(view, offset) # what send_file's read_exactly(fd, ...) does for a spool fd
    """

    def __init__(self, members: Iterable[ArchiveMember], *, force_zip64: bool = False):
        members = list(members)
        for member in members:
            if member.is_dir and (member.source is not None or member.size):
                raise ValueError(f"{member.path!r}: an empty folder has no data")
            if not member.is_dir and (member.source is None or member.size < 0):
                raise ValueError(f"{member.path!r}: a file needs a source and a size")
        self.names: dict[str, str] = archive_names(m.path for m in members)
        self._members = sorted(members, key=lambda m: self.names[m.path])
        self._entry_names = [self.names[m.path].encode() for m in self._members]
        self._crcs: dict[int, int] = {}
        self._opened: dict[int, int] = {}  # member index → fd we opened from its path, oldest first
        # A member's data read in order from its start: (the next offset, the CRC so far), checked at its end.
        self._in_order: dict[int, tuple[int, int]] = {}
        self.zip64 = (force_zip64 or len(self._members) >= ZIP32_MAX_ENTRIES
                      or self._layout(zip64=False)[-1].end > ZIP32_MAX_OFFSET)
        self._segments = self._layout(self.zip64)
        self._starts = [s.start for s in self._segments]
        self.size: int = self._segments[-1].end
        self._directory: bytes | None = None
        self._closed = False

    # -- the public reading interface ---------------------------------------------------------

    def read_at(self, offset: int, view) -> int:
        """Fills `view` with the archive's bytes from `offset`; returns how many (fewer only at
        the end of the archive)."""
        view = memoryview(view).cast("B")
        if offset < 0:
            raise ValueError("negative offset")
        if self._closed:
            raise ValueError("read from a closed ArchiveReader")
        n = max(0, min(len(view), self.size - offset))
        done = 0
        while done < n:
            position = offset + done
            segment = self._segments[bisect.bisect_right(self._starts, position) - 1]
            within = position - segment.start
            part = view[done:done + min(n - done, segment.end - position)]
            if segment.data:
                self._read_data(segment.entry, part, within)
            else:
                record = self._local_header(segment.entry) if segment.entry is not None else self._central_directory()
                part[:] = record[within:within + len(part)]
            done += len(part)
        return n

    def read_exactly(self, view, offset: int) -> None:
        """`uploader.read_exactly(fd, view, offset)` for the archive: all of `view` or an error."""
        if self.read_at(offset, view) != len(view):
            raise OSError(f"the archive is shorter than expected (at byte {self.size})")

    def close(self) -> None:
        """Closes the spool files it opened (never an fd it was given); reading then fails."""
        self._closed = True
        for fd in self._opened.values():
            os.close(fd)
        self._opened.clear()

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the records ---------------------------------------------------------------------------

    def _layout(self, zip64: bool) -> list[_Segment]:
        """Each entry's local header and data, then the central directory with the end records:
        every length follows from the names, sizes and `zip64` alone."""
        segments: list[_Segment] = []
        offset = directory = 0
        for index, (name, member) in enumerate(zip(self._entry_names, self._members)):
            header = LOCAL_HEADER.size + len(name) + (ZIP64_LOCAL_EXTRA.size if zip64 else 0)
            segments.append(_Segment(offset, header, index))
            if member.size:
                segments.append(_Segment(offset + header, member.size, index, data=True))
            offset += header + member.size
            directory += CENTRAL_HEADER.size + len(name) + (ZIP64_CENTRAL_EXTRA.size if zip64 else 0)
        ends = (ZIP64_END.size + ZIP64_LOCATOR.size if zip64 else 0) + END.size
        segments.append(_Segment(offset, directory + ends, None))
        return segments

    def _header_offsets(self) -> list[int]:
        return [s.start for s in self._segments if s.entry is not None and not s.data]

    def _local_header(self, index: int) -> bytes:
        name, size = self._entry_names[index], self._members[index].size
        crc = self._crc(index)
        if self.zip64:
            fields = (45, UTF8_NAMES, 0, DOS_TIME, DOS_DATE, crc, ZIP32_MAX_OFFSET, ZIP32_MAX_OFFSET, len(name),
                      ZIP64_LOCAL_EXTRA.size)
            extra = ZIP64_LOCAL_EXTRA.pack(ZIP64_EXTRA_ID, ZIP64_LOCAL_EXTRA.size - 4, size, size)
        else:
            fields, extra = (20, UTF8_NAMES, 0, DOS_TIME, DOS_DATE, crc, size, size, len(name), 0), b""
        return LOCAL_HEADER.pack(LOCAL_SIGNATURE, *fields) + name + extra

    def _central_directory(self) -> bytes:
        """The central directory and the end records (ZIP64 ones first where used); it needs
        every member's CRC, and is built once."""
        if self._directory is not None:
            return self._directory
        records = []
        for index, (name, offset) in enumerate(zip(self._entry_names, self._header_offsets())):
            size = self._members[index].size
            mode = DIRECTORY_MODE if self._members[index].is_dir else FILE_MODE
            attributes = mode << 16 | (MSDOS_DIRECTORY if self._members[index].is_dir else 0)
            version = 45 if self.zip64 else 20
            shown = (ZIP32_MAX_OFFSET, ZIP32_MAX_OFFSET, ZIP32_MAX_OFFSET) if self.zip64 else (size, size, offset)
            extra = ZIP64_CENTRAL_EXTRA.pack(ZIP64_EXTRA_ID, ZIP64_CENTRAL_EXTRA.size - 4, size, size, offset) \
                if self.zip64 else b""
            records.append(CENTRAL_HEADER.pack(
                CENTRAL_SIGNATURE, version, UNIX, version, 0, UTF8_NAMES, 0, DOS_TIME, DOS_DATE, self._crc(index),
                shown[0], shown[1], len(name), len(extra), 0, 0, 0, attributes, shown[2]) + name + extra)
        directory = b"".join(records)
        start, entries = self._segments[-1].start, len(records)
        if self.zip64:
            end_of_directory = start + len(directory)
            records.append(ZIP64_END.pack(ZIP64_END_SIGNATURE, ZIP64_END.size - 12, 45, 45, 0, 0, entries, entries,
                                          len(directory), start))
            records.append(ZIP64_LOCATOR.pack(ZIP64_LOCATOR_SIGNATURE, 0, end_of_directory, 1))
            records.append(END.pack(END_SIGNATURE, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, ZIP32_MAX_OFFSET, ZIP32_MAX_OFFSET, 0))
        else:
            records.append(END.pack(END_SIGNATURE, 0, 0, entries, entries, len(directory), start, 0))
        self._directory = b"".join(records)
        if len(self._directory) != self._segments[-1].length:
            raise AssertionError("the central directory does not have its planned size")
        return self._directory

    # -- the spool files ---------------------------------------------------------------------

    def _crc(self, index: int) -> int:
        if index not in self._crcs:
            size = self._members[index].size
            buffer = memoryview(bytearray(min(BLOCK_SIZE, size)))  # one buffer: no page faults per block
            crc = offset = 0
            while offset < size:
                part = buffer[:min(len(buffer), size - offset)]
                self._pread(index, part, offset)
                crc = zlib.crc32(part, crc)
                offset += len(part)
            self._crcs[index] = crc
        return self._crcs[index]

    def _read_data(self, index: int, view: memoryview, offset: int) -> None:
        """A member's data; read in order from its start, it is checked against the CRC its
        header was given, so a spool file that changed since is an error, never a wrong archive."""
        self._pread(index, view, offset)
        expected, crc = self._in_order.get(index, (0, 0)) if offset else (0, 0)  # from its start: anew
        if offset != expected:
            return  # a resume in mid-file: its own header went out with an earlier reader
        crc = zlib.crc32(view, crc)
        if offset + len(view) < self._members[index].size:
            self._in_order[index] = (offset + len(view), crc)
            return
        self._in_order.pop(index, None)
        if index in self._crcs and crc != self._crcs[index]:
            raise ArchiveSourceChanged(f"{self._members[index].path}: the spool file changed while it was archived")

    def _pread(self, index: int, view: memoryview, offset: int) -> None:
        fd = self._fd(index)
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                member = self._members[index]
                raise ArchiveSourceChanged(
                    f"{member.path}: the spool file is shorter than the {member.size} bytes planned")
            done += n

    def _fd(self, index: int) -> int:
        source = self._members[index].source
        if isinstance(source, int):
            return source
        fd = self._opened.pop(index, None)
        if fd is None:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            if len(self._opened) >= MAX_OPEN_FILES:  # a tree of many files must not run out of fds
                os.close(self._opened.pop(next(iter(self._opened))))
        self._opened[index] = fd  # now the most recently used
        return fd
