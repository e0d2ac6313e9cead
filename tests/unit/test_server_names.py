"""Server names: every name fs360 sends is one the real server's flattening leaves unchanged.

The oracle is the flattening api.md Part C describes, as the emulator's vendor profile runs
it: werkzeug's `secure_filename` (the function the vendor's server uses), then the extension
lower-cased.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs360.emulator.profiles import VendorProfile
from fs360.engine.server_names import MAX_NAME_BYTES, deduplicated, server_name_for
from fs360.fs.names import extension_of

VENDOR = VendorProfile()


def vendor_flatten(name: str) -> str:
    """What the vendor's server stores for `name` (its emulator profile runs the server's function)."""
    return VENDOR.flatten(quote(name, safe=""))


@pytest.mark.parametrize("local, server", [
    ("scan 1.e57", "scan_1.e57"),
    ("scan_1.e57", "scan_1.e57"),
    ("Фото.jpg", "Foto.jpg"),
    ("a\u0085b.jpg", "ab.jpg"),
    ("Scan.E57", "Scan.e57"),
    ("scan.jpg ", "scan.jpg"),          # trailing space: the extension is still jpg
    ("北京 office.PLY", "BeiJing_office.ply"),
    ("-_.weird_-.jpg", "weird.jpg"),
    ("x.tar.gz", "x.tar.gz"),
    ("...", "file"),
    ("Ошибка", "Oshibka"),
    ("ü.jpg", "u.jpg"),
    ("?.jpg", "file.jpg"),             # nothing of the stem survives: a fallback stem
    ("back\\slash.jpg", "backslash.jpg"),
])
def test_examples(local, server):
    assert server_name_for(local) == server
    assert vendor_flatten(server) == server


def test_extension_is_the_servers():
    assert extension_of("scan.JPG ") == "jpg"
    assert extension_of("Фото.JPEG") == "jpeg"
    assert extension_of("noext") == ""
    assert extension_of(".hidden") == ""


def test_deduplicated_case_insensitively_with_stable_suffixes():
    assert deduplicated("scan_1.e57", set()) == "scan_1.e57"
    assert deduplicated("Scan_1.e57", {"scan_1.e57"}) == "Scan_1_2.e57"
    assert deduplicated("scan_1.e57", {"scan_1.e57", "scan_1_2.e57"}) == "scan_1_3.e57"
    assert deduplicated("file", {"file"}) == "file_2"


@settings(max_examples=400, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_any_name_maps_to_a_fixed_point_of_the_servers_flattening(name):
    server = server_name_for(name)
    assert vendor_flatten(server) == server, (name, server)
    assert len(server.encode()) <= MAX_NAME_BYTES
    assert server.isascii()


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40), st.sets(st.text(min_size=1, max_size=20), max_size=20))
def test_deduplicated_names_stay_fixed_points_and_free(name, others):
    taken = {server_name_for(o).lower() for o in others}
    chosen = deduplicated(server_name_for(name), taken)
    assert chosen.lower() not in taken
    assert vendor_flatten(chosen) == chosen
