"""Where the emulator's two profiles differ: ``default`` (api.md Part B, the
strict choices) and ``vendor`` (Part C, what the real service is known or
likely to do).  Everything else is the same code for both; doc/EMULATOR.md
lists each difference.

Names, extensions and the ready record live here because they are what the
profiles disagree on.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote_to_bytes

EXT_GROUPS = {
    "images": "jpg jpeg png tif tiff webp heic heif dng",
    "pointclouds": "e57 las laz ply pts ptx xyz pcd rcp rcs fls lgs",
    "cad": "ifc dwg dxf rvt nwd nwc skp obj fbx glb gltf stl dae",
    "splats": "splat spz ksplat",
    "video": "mp4 mov insv insp 360 mkv",
    "archives": "zip 7z rar",
}
DEFAULT_EXTENSIONS = [e for g in EXT_GROUPS.values() for e in g.split()]
# Part C: the list a default deployment of the real service sends with its first 415.
VENDOR_EXTENSIONS = (
    "7z csv dat db e57 exr frag glb gpx ifc jpeg jpg json kml kmz ksplat las laz lgs lgsx mp4 mtl obj opt out pdf"
    " ply png pts ptx rad rar rmx sog splat spz stl tif tiff txt xyz zip"
).split()

IMAGES = set(EXT_GROUPS["images"].split())
VIDEO = set(EXT_GROUPS["video"].split())
POINTS = set(EXT_GROUPS["pointclouds"].split())
MESH = {"glb", "gltf", "fbx", "obj", "stl", "dae", "skp"}
SPLATS = set(EXT_GROUPS["splats"].split()) | {"sog"}

# The ready record's output flags (and public_project): 0/1 in the default
# profile, JSON booleans in the vendor's published schema.
FLAG_FIELDS = ("potree", "glb", "obj", "ifc", "kml", "pdf", "geotiff", "threedgs", "video360", "public_project")
NAME_MAX_BYTES = 255
# Record fields the server sets itself: a POST /projects field of that name is not passed through.
RECORD_OWN = {"id", "name", "status", "created", "updated", "deleted", "redirect", "last_usage", "files", "size",
              "views", "setups_count", "errors", "upload_id", "download_link", "create_count"}


def _decode(raw: str):
    """A URL filename segment percent-decoded to text, or None when it is not UTF-8."""
    try:
        return unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None


def _fits(name: str) -> bool:
    return name not in ("", ".", "..") and len(name.encode("utf-8")) <= NAME_MAX_BYTES


def flatten_name(raw: str):
    """Part B: percent-decode, drop separators and control characters. Returns name or None."""
    name = _decode(raw)
    if name is None:
        return None
    name = "".join(c for c in name if c not in "/\\" and unicodedata.category(c) != "Cc")
    return name if _fits(name) else None


def extension_of(name: str) -> str:
    if "." not in name:
        return ""
    return name.rpartition(".")[2].lower()


class Profile:
    """The default profile: api.md Part B."""

    name = "default"
    extensions = DEFAULT_EXTENSIONS
    idle_expiry = False  # a session expires `lifetime` after its creation
    list_projects = False  # GET /projects is not served
    delete_discards_projects = False  # DELETE /uploads/{id} leaves projects alone
    pass_through_options = False  # POST /projects fields other than the record's own are dropped
    missing_key_error = "unauthorized"
    unknown_key_error = "unauthorized"

    def flatten(self, raw: str):
        return flatten_name(raw)

    def expires_in(self, lifetime: float):
        return int(lifetime) if lifetime == int(lifetime) else lifetime

    def ready_record(self, out: dict) -> dict:
        """The record at status 100, from the stored columns; typed the profile's way."""
        return out


class ProfileUnavailable(RuntimeError):
    """A profile whose optional dependency is missing; the message says what to install."""


class VendorProfile(Profile):
    """api.md Part C, every point at once."""

    name = "vendor"
    extensions = VENDOR_EXTENSIONS
    idle_expiry = True
    list_projects = True
    delete_discards_projects = True
    pass_through_options = True
    missing_key_error = "missing_bearer_token"
    unknown_key_error = "invalid_api_key"

    def __init__(self):
        # The same function the real server runs (a web framework's), not a copy of it: an
        # extra of this profile alone (fs360[vendor-emulator]), everything else is stdlib.
        try:
            from werkzeug.utils import secure_filename
        except ImportError:
            raise ProfileUnavailable("the vendor profile flattens names with werkzeug's secure_filename, and "
                                     "werkzeug is not installed: pip install 'fs360[vendor-emulator]'") from None
        self._secure = secure_filename

    def flatten(self, raw: str):
        name = _decode(raw)
        if name is None:
            return None
        name = self._secure(name)
        stem, dot, ext = name.rpartition(".")
        if dot:
            name = f"{stem}.{ext.lower()}"
        return name if _fits(name) else None

    def expires_in(self, lifetime: float):
        return float(lifetime)

    def ready_record(self, out: dict) -> dict:
        for k in FLAG_FIELDS:
            out[k] = bool(out.get(k))
        errors = out.get("errors")
        if not isinstance(errors, int) or isinstance(errors, bool):
            out["errors"] = 0 if errors is None else 1  # a count, not a message
        out["proj4"] = "" if out.get("proj4") is None else str(out["proj4"])
        out.setdefault("deleted", False)
        out.setdefault("redirect", None)
        out.setdefault("last_usage", out["updated"])
        return out


PROFILES = {"default": Profile, "vendor": VendorProfile}
