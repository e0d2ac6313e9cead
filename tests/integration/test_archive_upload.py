"""A folder tree's archive (engine/archive.py) uploaded to the emulator in chunks, interrupted
and resumed from the server's `received` by a new reader, as after a daemon restart."""

from __future__ import annotations

import hashlib
import random

import pytest

from fs360.api.client import ApiClient
from fs360.config import Settings
from fs360.engine.archive import ArchiveMember, ArchiveReader
from tests.harness import wait_until

CHUNK = 64 * 1024
ARCHIVE_NAME = "Office_scan.zip"
# Three levels, spaces, non-ASCII names, an empty folder, a 0-byte file; several chunks in all.
TREE = {
    "Scans/scan 1.e57": random.Random(1).randbytes(200_000),
    "Scans/Фото 1.JPG": random.Random(2).randbytes(90_000),
    "Scans/Raw/empty.bin": b"",
    "Scans/Raw/deep file.txt": b"three levels down\n",
    "Panoramas/pano été.jpg": random.Random(3).randbytes(70_000),
    "Empty Folder/": None,
    "top level.txt": b"top",
}


def spooled_tree(tmp_path) -> list[ArchiveMember]:
    spool = tmp_path / "spool"
    spool.mkdir()
    members = []
    for number, (path, content) in enumerate(TREE.items()):
        if content is None:
            members.append(ArchiveMember(path))
        else:
            (spool / str(number)).write_bytes(content)
            members.append(ArchiveMember(path, str(spool / str(number)), len(content)))
    return members


def send_archive(client: ApiClient, upload_id: str, reader: ArchiveReader, start: int,
                 max_chunks: int | None = None) -> int:
    """uploader.send_file's chunk loop, reading through the archive's `read_exactly(view, offset)`
    where send_file reads a spool fd; stops after `max_chunks` PUTs (an interruption)."""
    view = memoryview(bytearray(CHUNK))
    offset, puts = start, 0
    while offset < reader.size and puts != max_chunks:
        n = min(CHUNK, reader.size - offset)
        reader.read_exactly(view[:n], offset)
        progress = client.put(upload_id, ARCHIVE_NAME, view[:n], offset, reader.size)
        assert progress.total == reader.size
        offset = progress.received
        puts += 1
    return offset


@pytest.mark.parametrize("force_zip64", [False, True], ids=["zip32", "zip64"])
def test_an_interrupted_archive_upload_resumes_and_the_project_lists_the_tree(profiled_emulator, tmp_path,
                                                                              force_zip64):
    emulator = profiled_emulator
    client = ApiClient(Settings(api_url=emulator.base_url, api_key=emulator.api_key, rate_limits_enabled=False))
    members = spooled_tree(tmp_path)
    with ArchiveReader(members, force_zip64=force_zip64) as local:
        expected = bytearray(local.size)
        assert local.read_at(0, expected) == local.size
        names = local.names
    upload_id = client.open_session().upload_id

    with ArchiveReader(members, force_zip64=force_zip64) as first:
        assert first.size > 4 * CHUNK
        stopped_at = send_archive(client, upload_id, first, 0, max_chunks=3)
    received = client.file_status(upload_id, ARCHIVE_NAME).received
    assert received == stopped_at == 3 * CHUNK

    # A new reader, as in a new process: nothing of the first one is left.
    with ArchiveReader(members, force_zip64=force_zip64) as resumed:
        assert send_archive(client, upload_id, resumed, received) == resumed.size
    status = client.file_status(upload_id, ARCHIVE_NAME)
    assert status.complete and status.total == len(expected)

    stored = [f for f in emulator.files() if f["upload_id"] == upload_id]
    assert [f["name"] for f in stored] == [ARCHIVE_NAME]
    assert stored[0]["sha256"] == hashlib.sha256(expected).hexdigest()
    assert stored[0]["overwritten_bytes"] == 0  # resumed exactly where the server stood

    project = client.create_project({"upload_id": upload_id})
    ready = wait_until(lambda: (p := client.project_status(project.name)).status == 100 and p,
                       timeout=30, what="the project to be ready")
    tree_files = sorted(name for local, name in names.items() if not local.endswith("/"))
    assert ready.record["files"] == tree_files
    assert ready.record["errors"] in (None, 0)
    assert "Scans/Foto_1.jpg" in tree_files and "Scans/Raw/empty.bin" in tree_files
