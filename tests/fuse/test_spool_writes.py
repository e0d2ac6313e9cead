"""Writes through a real mount that mix the spool's two paths (engine/spool.py): large aligned
runs written past the page cache, behind the writer, and small, unaligned or early ones through
it. Whatever the mix, a read through the mount sees every write made before it, and the server
ends up with exactly the bytes written."""

from __future__ import annotations

import hashlib
import os
import random

from tests.harness import assert_uploaded

MiB = 1024 * 1024


def test_mixed_writes_read_back_at_once_and_upload_exactly(mount, emulator):
    rng = random.Random(1917)
    session = mount.mountpoint / "mix"
    session.mkdir()
    path = session / "scan.e57"
    expected = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        def write(offset: int, data: bytes) -> None:
            assert os.pwrite(fd, data, offset) == len(data)
            if offset > len(expected):
                expected.extend(bytes(offset - len(expected)))
            expected[offset:offset + len(data)] = data

        for offset in range(0, 24 * MiB, MiB):             # cp-like: 1 MiB aligned, direct past the first MiB
            write(offset, rng.randbytes(MiB))
        for _ in range(40):                                  # rewrites, aligned or not, large and small
            offset = rng.randrange(0, 24 * MiB)
            if rng.random() < 0.5:
                offset -= offset % 4096
            write(offset, rng.randbytes(rng.choice([100, 5000, 64 * 1024, 300 * 1024, MiB])))
            # Read back at once through the mount, around what was just written.
            at = max(0, offset - 70_000)
            assert os.pread(fd, 2 * MiB, at) == bytes(expected[at:at + 2 * MiB])
        os.ftruncate(fd, 20 * MiB + 12345)                   # a truncate after writes still behind
        del expected[20 * MiB + 12345:]
        write(len(expected), rng.randbytes(3 * MiB + 1))     # and growth past it, unaligned
        assert os.pread(fd, 4 * MiB, 19 * MiB) == bytes(expected[19 * MiB:23 * MiB])
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(expected)
    assert mount.wait_settled("mix") == {"scan.e57": "complete"}
    assert_uploaded(emulator, mount.status_json("mix")["upload_id"],
                    {"scan.e57": hashlib.sha256(expected).hexdigest()})
