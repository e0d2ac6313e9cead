"""engine/archive.py: a folder tree as one deterministic stored zip, read at any offset."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import zipfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fs360.engine.archive import (
    DIRECTORY_MODE, FILE_MODE, MAX_OPEN_FILES, ZIP32_MAX_ENTRIES, ArchiveMember, ArchiveReader, ArchiveSourceChanged,
    archive_names,
)
from fs360.engine.server_names import server_name_for

UTF8_NAMES_FLAG = 0x800
# A tree as a program writes it into a session: local relative path → content (None: empty folder).
TREE = {
    "Scans/scan 1.e57": random.Random(1).randbytes(300_000),
    "Scans/Фото 1.JPG": b"jpeg bytes",
    "Scans/Raw/empty.bin": b"",
    "Scans/Raw/deep file.txt": b"three levels down\n",
    "Panoramas/pano été.jpg": random.Random(2).randbytes(70_000),
    "Empty Folder/": None,
    "top level.txt": b"top",
}
MAPPED = {
    "Scans/scan 1.e57": "Scans/scan_1.e57",
    "Scans/Фото 1.JPG": "Scans/Foto_1.jpg",
    "Scans/Raw/empty.bin": "Scans/Raw/empty.bin",
    "Scans/Raw/deep file.txt": "Scans/Raw/deep_file.txt",
    "Panoramas/pano été.jpg": "Panoramas/pano_ete.jpg",
    "Empty Folder/": "Empty_Folder/",
    "top level.txt": "top_level.txt",
}


def spool(tmp_path, tree: dict) -> list[ArchiveMember]:
    """Each file's bytes in a spool file named by a number, as the daemon keeps them."""
    directory = tmp_path / "spool"
    directory.mkdir(exist_ok=True)
    members = []
    for number, (path, content) in enumerate(tree.items()):
        if content is None:
            members.append(ArchiveMember(path))
            continue
        spool_file = directory / str(number)
        spool_file.write_bytes(content)
        members.append(ArchiveMember(path, str(spool_file), len(content)))
    return members


def whole(reader: ArchiveReader) -> bytes:
    buffer = bytearray(reader.size + 100)
    n = reader.read_at(0, buffer)
    assert n == reader.size
    return bytes(buffer[:n])


def unzip(archive: bytes, tmp_path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "check.zip"
    path.write_bytes(archive)
    return subprocess.run(["unzip", *args, str(path)], capture_output=True, text=True)


needs_unzip = pytest.mark.skipif(shutil.which("unzip") is None, reason="needs unzip (scripts/setup installs it)")


def test_the_same_tree_gives_the_same_bytes_whatever_the_order_given(tmp_path):
    members = spool(tmp_path, TREE)
    first = whole(ArchiveReader(members))
    shuffled = list(reversed(members))
    second = whole(ArchiveReader(shuffled))
    assert first == second
    assert ArchiveReader(members).size == ArchiveReader(shuffled).size == len(first)


def test_the_size_is_known_before_any_spool_file_exists(tmp_path):
    """Planning reads no data: the sources point where the files will only be later."""
    members = [ArchiveMember(m.path, str(tmp_path / "later" / os.path.basename(m.source)), m.size)
               if m.source else m for m in spool(tmp_path, TREE)]
    reader = ArchiveReader(members)
    planned = reader.size
    shutil.copytree(tmp_path / "spool", tmp_path / "later")
    assert len(whole(reader)) == planned


@needs_unzip
def test_zipfile_and_unzip_read_the_tree_back(tmp_path):
    archive = whole(ArchiveReader(spool(tmp_path, TREE)))
    tested = unzip(archive, tmp_path, "-t")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    listed = unzip(archive, tmp_path, "-Z1")
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.testzip() is None
        assert z.namelist() == sorted(MAPPED.values())
        assert listed.stdout.splitlines() == z.namelist()
        for local, name in MAPPED.items():
            if TREE[local] is not None:
                assert hashlib.sha256(z.read(name)).digest() == hashlib.sha256(TREE[local]).digest(), name


def test_names_follow_the_server_rules_per_component(tmp_path):
    reader = ArchiveReader(spool(tmp_path, TREE))
    assert reader.names == MAPPED
    for name in reader.names.values():
        for component in name.rstrip("/").split("/"):
            assert server_name_for(component) == component


def test_clashing_names_are_deduplicated_within_their_folder_only():
    names = archive_names(["a/scan 1.jpg", "a/scan_1.jpg", "a/SCAN_1.JPG", "b/scan 1.jpg",
                           "Фото/x.jpg", "Foto/y.jpg"])
    assert names["a/scan_1.jpg"] == "a/scan_1.jpg"  # already server-safe: keeps its name
    # The others in a fixed order (code points), the server's case-insensitive way.
    assert names["a/SCAN_1.JPG"] == "a/SCAN_1_2.jpg"
    assert names["a/scan 1.jpg"] == "a/scan_1_3.jpg"
    assert names["b/scan 1.jpg"] == "b/scan_1.jpg"
    # Two folders whose names flatten alike become two folders, not one.
    assert {names["Фото/x.jpg"].split("/")[0], names["Foto/y.jpg"].split("/")[0]} == {"Foto", "Foto_2"}
    assert names["Foto/y.jpg"] == "Foto/y.jpg"


@pytest.mark.parametrize("bad", ["/abs.jpg", "a//b.jpg", "a/../b.jpg", "./a.jpg", "", "a/\0.jpg"])
def test_paths_that_are_not_relative_are_refused(bad):
    with pytest.raises(ValueError):
        archive_names([bad])


def test_a_path_that_is_both_file_and_folder_is_refused():
    with pytest.raises(ValueError):
        archive_names(["a", "a/b.jpg"])


def test_empty_folders_and_empty_files_are_entries_with_fixed_dates_modes_and_utf8_names(tmp_path):
    archive = whole(ArchiveReader(spool(tmp_path, TREE)))
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        infos = {i.filename: i for i in z.infolist()}
    assert infos["Empty_Folder/"].is_dir()
    assert infos["Scans/Raw/empty.bin"].file_size == 0 and not infos["Scans/Raw/empty.bin"].is_dir()
    for info in infos.values():
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.flag_bits & UTF8_NAMES_FLAG
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == (DIRECTORY_MODE if info.is_dir() else FILE_MODE)


def test_an_fd_works_like_a_path_and_stays_open(tmp_path):
    members = spool(tmp_path, TREE)
    fds = {}
    with_fds = []
    for m in members:
        if m.source is None:
            with_fds.append(m)
        else:
            fds[m.path] = os.open(m.source, os.O_RDONLY)
            os.unlink(m.source)  # an fd reads a spool file even after it is gone
            with_fds.append(ArchiveMember(m.path, fds[m.path], m.size))
    try:
        with ArchiveReader(with_fds) as reader:
            archive = whole(reader)
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            assert z.read("Scans/scan_1.e57") == TREE["Scans/scan 1.e57"]
        for fd in fds.values():
            os.fstat(fd)  # not closed by the reader
    finally:
        for fd in fds.values():
            os.close(fd)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_slice_read_by_a_fresh_reader_equals_the_whole_archive(tmp_path, data):
    members = spool(tmp_path, TREE)
    expected = whole(ArchiveReader(members))
    offset = data.draw(st.integers(0, len(expected)), label="offset")
    length = data.draw(st.integers(0, 200_000), label="length")
    buffer = bytearray(length)
    n = ArchiveReader(members).read_at(offset, buffer)
    assert bytes(buffer[:n]) == expected[offset:offset + length]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_reads_back_and_forth_on_one_reader_equal_the_whole_archive(tmp_path, data):
    """A resume goes back to the server's `received` (a retried chunk) or jumps ahead (a 409)."""
    members = spool(tmp_path, TREE)
    expected = whole(ArchiveReader(members))
    reader = ArchiveReader(members)
    for _ in range(data.draw(st.integers(1, 12), label="reads")):
        offset = data.draw(st.integers(0, len(expected)), label="offset")
        length = data.draw(st.integers(1, 100_000), label="length")
        buffer = bytearray(length)
        n = reader.read_at(offset, buffer)
        assert bytes(buffer[:n]) == expected[offset:offset + length]


def test_read_exactly_fills_the_view_or_fails_at_the_end(tmp_path):
    reader = ArchiveReader(spool(tmp_path, TREE))
    expected = whole(ArchiveReader(spool(tmp_path, TREE)))
    view = memoryview(bytearray(1000))
    reader.read_exactly(view, 5000)
    assert bytes(view) == expected[5000:6000]
    with pytest.raises(OSError):
        reader.read_exactly(view, reader.size - 10)


def test_a_spool_file_that_changed_after_planning_is_an_error_not_a_wrong_archive(tmp_path):
    members = spool(tmp_path, TREE)
    reader = ArchiveReader(members)
    shrunk = next(m for m in members if m.path == "Scans/scan 1.e57")
    os.truncate(shrunk.source, 10)
    with pytest.raises(ArchiveSourceChanged):
        whole(reader)


def test_a_spool_file_rewritten_in_place_while_archived_is_an_error(tmp_path):
    """Same size, other bytes, after its header (with the CRC of the bytes before) went out."""
    members = spool(tmp_path, TREE)
    reader = ArchiveReader(members)
    first = next(s for s in reader._segments if s.data)  # the first member's data, after its header
    reader.read_at(0, bytearray(first.start + 10))
    changed = reader._members[first.entry]
    with open(changed.source, "r+b") as f:
        f.seek(100)
        f.write(b"changed")
    with pytest.raises(ArchiveSourceChanged):
        whole(reader)


# The archives stream_zip 0.0.84 wrote for TREE (before the records were written here): an upload
# of an archive begun by that build resumes on these bytes, so they must not change.
STREAM_ZIP_ARCHIVES = {
    False: (370829, "358de65fe25e86acf63f85cdc2dfe997828cef9cd576a2fa1a40f68a15f0fa49"),
    True: (371241, "4e6cb91201d9919e9243d93f0f01398d4747a5922acd3090d21a4c069ee32089"),
}


@pytest.mark.parametrize("force_zip64", [False, True], ids=["zip32", "zip64"])
def test_the_bytes_are_those_the_zip_library_wrote_before(tmp_path, force_zip64):
    archive = whole(ArchiveReader(spool(tmp_path, TREE), force_zip64=force_zip64))
    assert (len(archive), hashlib.sha256(archive).hexdigest()) == STREAM_ZIP_ARCHIVES[force_zip64]


def test_a_resume_inside_a_file_reads_that_file_only(tmp_path):
    """Resumable by construction: bytes are produced where they lie, nothing is run up to them."""
    members = spool(tmp_path, TREE)
    expected = whole(ArchiveReader(members))
    reader = ArchiveReader(members)
    last = max((s for s in reader._segments if s.data), key=lambda s: s.length)  # scan_1.e57, mid-archive
    for member in members:
        if member.source is not None and member is not reader._members[last.entry]:
            os.unlink(member.source)  # any read of another file would fail
    buffer = bytearray(last.length - 7)
    assert reader.read_at(last.start + 7, buffer) == len(buffer)
    assert bytes(buffer) == expected[last.start + 7:last.end]


def test_65535_entries_take_zip64_records_that_zipfile_reads(tmp_path):
    folders = [ArchiveMember(f"{n:05d}/") for n in range(ZIP32_MAX_ENTRIES)]
    reader = ArchiveReader(folders)
    assert reader.zip64 and not ArchiveReader(folders[:-1]).zip64
    archive = whole(reader)
    assert len(archive) == reader.size
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        names = z.namelist()
    assert len(names) == ZIP32_MAX_ENTRIES and names[-1] == f"{ZIP32_MAX_ENTRIES - 1:05d}/"


def test_a_tree_with_no_files_at_all_is_a_valid_archive(tmp_path):
    archive = whole(ArchiveReader([ArchiveMember("only folder/")]))
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.namelist() == ["only_folder/"]


@needs_unzip
def test_forced_zip64_is_read_back_by_zipfile_and_unzip(tmp_path):
    members = spool(tmp_path, TREE)
    reader = ArchiveReader(members, force_zip64=True)
    archive = whole(reader)
    assert reader.zip64 and len(archive) == reader.size
    assert b"PK\x06\x06" in archive[-200:]  # the ZIP64 end of central directory record
    assert archive != whole(ArchiveReader(members))
    tested = unzip(archive, tmp_path, "-t")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.namelist() == sorted(MAPPED.values())
        assert z.read("Panoramas/pano_ete.jpg") == TREE["Panoramas/pano été.jpg"]
    buffer = bytearray(3000)
    n = ArchiveReader(members, force_zip64=True).read_at(len(archive) - 2000, buffer)
    assert bytes(buffer[:n]) == archive[-2000:]


@pytest.mark.slow(5)
def test_a_sparse_file_over_4_gib_makes_a_zip64_archive_readable_around_the_boundary(tmp_path, tmpfs):
    """No real disk: the big file is a hole, on a tmpfs where one can be mounted (reading its
    4 GiB there is a copy of zeros: 0.1 s, where ext4 took 10 s). Only the bytes around 4 GiB
    and the end are read."""
    big = tmpfs("1m", or_plain_dir=True) / "big"
    big_size = (4 << 30) + (3 << 20)
    with open(big, "wb") as f:
        f.truncate(big_size)
        f.seek(big_size - 5)
        f.write(b"tail!")
    small = tmp_path / "small"
    small.write_bytes(b"after the big one")
    members = [ArchiveMember("Scans/huge.e57", str(big), big_size), ArchiveMember("Scans/z.txt", str(small), 17)]
    reader = ArchiveReader(members)
    assert reader.zip64 and reader.size > big_size

    # Around the 4 GiB boundary: inside the big file's data, read straight from the spool file.
    window = bytearray(1 << 20)
    assert reader.read_at(0xFFFFFFFF - len(window) // 2, window) == len(window)
    assert window == bytes(len(window))
    # The end (the small file, the central directory): every member's CRC is read once.
    tail_size = 4096
    tail = bytearray(tail_size)
    assert reader.read_at(reader.size - tail_size, tail) == tail_size
    # The archive's end, appended to a hole of the right length, is a zip that zipfile reads.
    rebuilt = tmp_path / "rebuilt.zip"
    with open(rebuilt, "wb") as f:
        f.truncate(reader.size - tail_size)
        f.seek(reader.size - tail_size)
        f.write(tail)
    with zipfile.ZipFile(rebuilt) as z:
        infos = z.infolist()
        assert [i.filename for i in infos] == ["Scans/huge.e57", "Scans/z.txt"]
        assert infos[0].file_size == big_size and infos[1].header_offset > 0xFFFFFFFF
        assert z.read("Scans/z.txt") == b"after the big one"


component = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=12) \
    .filter(lambda c: c not in (".", ".."))


@st.composite
def trees(draw):
    """Random small trees: nested paths with any characters, empty files and empty folders."""
    paths = draw(st.lists(st.lists(component, min_size=1, max_size=3).map("/".join), min_size=1, max_size=8,
                          unique=True))
    try:
        archive_names(paths)
    except ValueError:  # a path that is also a folder of another: not a tree
        assume(False)
    tree = {}
    for path in paths:
        if draw(st.booleans()) and not any(other.startswith(path + "/") for other in paths):
            tree[path] = draw(st.binary(max_size=3000))
        elif not any(other.startswith(path + "/") for other in paths):
            tree[path + "/"] = None
    return tree


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees(), force_zip64=st.booleans(), data=st.data())
def test_any_tree_gives_an_archive_of_the_planned_size_that_reads_back(tmp_path, tree, force_zip64, data):
    shutil.rmtree(tmp_path / "spool", ignore_errors=True)
    members = spool(tmp_path, tree)
    reader = ArchiveReader(members, force_zip64=force_zip64)
    archive = whole(reader)
    assert len(archive) == reader.size
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.namelist() == sorted(reader.names.values())
        for local, content in tree.items():
            if content is not None:
                assert z.read(reader.names[local]) == content
    offset = data.draw(st.integers(0, len(archive)), label="offset")
    buffer = bytearray(data.draw(st.integers(0, 5000), label="length"))
    n = ArchiveReader(members, force_zip64=force_zip64).read_at(offset, buffer)
    assert bytes(buffer[:n]) == archive[offset:offset + len(buffer)]


def test_a_closed_reader_closes_what_it_opened_and_reads_no_more(tmp_path):
    reader = ArchiveReader(spool(tmp_path, TREE))
    whole(reader)
    opened = set(os.listdir("/proc/self/fd"))
    reader.close()
    assert len(set(os.listdir("/proc/self/fd"))) < len(opened)
    with pytest.raises(ValueError):
        reader.read_at(0, bytearray(10))


def test_a_tree_of_many_files_never_holds_many_spool_files_open(tmp_path):
    many = {f"Scans/{n:03d} scan.jpg": bytes([n]) * n for n in range(60)}
    reader = ArchiveReader(spool(tmp_path, many))
    before = len(os.listdir("/proc/self/fd"))
    archive = whole(reader)
    buffer = bytearray(50_000)
    for offset in range(0, reader.size, 997):  # back and forth over every member's data
        reader.read_at(reader.size - offset, buffer)
    assert len(os.listdir("/proc/self/fd")) - before <= MAX_OPEN_FILES
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.read("Scans/059_scan.jpg") == bytes([59]) * 59
