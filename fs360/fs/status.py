"""The `status` and `status.json` files, and the whole mount's snapshot: one consistent state,
read from memory with the engine's lock held, rendered after it is released.

The mount's snapshot (`RenderedStatus.mount_snapshot`) is what `fs360 status`, `status --json`
(its schema: doc/STATUS-JSON.md), the dashboard and /metrics show; rates come from the
progress events (rates.py), not from the records.
"""

from __future__ import annotations

import functools
import json
import re
import time
from operator import attrgetter

from ..engine.projects import project_page
from ..engine.records import COMPLETE, FAILED, IN_TREE, P_READY, UPLOADING, SessionRecord
from ..options import unknown_create_fields
from .rates import RateBook, eta_seconds

BAR_WIDTH = 20
# A session of more files than this lists only those not complete in its `status` (a line
# says how many complete ones are left out; status.json lists every file).
TEXT_LISTS_COMPLETE_UP_TO = 1000
PRIVACY_NAMES = {2: "private (owner and invited users)", 1: "anyone with the link", 0: "public"}
PAUSED_LINE = "paused: uploads wait (fs360 resume MOUNTPOINT)"
# Status files are rendered at getattr too (for their size); this long a render is reused.
STATUS_SIZE_TTL = 1.0
# States of a file that is still on its way (unmount --wait waits for them). "closed": closed,
# waiting for its writer to exit.
BUSY_STATES = ("writing", "closed", "pending", "uploading", "failed")
# States that will not reach the server without the user: each has its reason and what to do.
NEEDS_YOU_STATES = ("rejected", "held", "interrupted", "lost")
SCHEMA_VERSION = 1


_DIGIT_RUNS = re.compile(r"(\d+)")

# Characters that a terminal acts on or that change what a line seems to say. A name may hold
# any but C0 controls: C1 controls (U+009B is a CSI to some terminals: a name could move the
# cursor or recolour `fs360 status`), bidirectional overrides and isolates (a name that reads
# "exe.jpg" backwards), zero-width characters. What a server sends (a project's name) may hold
# C0 controls too. Text for people shows each escaped; a line break stays one.
_DECEPTIVE = "\x80-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff"
_UNSAFE_IN_TEXT = re.compile(f"[\x00-\x09\x0b-\x1f\x7f{_DECEPTIVE}]")
# rich's own output: its styling is C0 (ESC sequences, carriage returns), what it draws of names is not.
_UNSAFE_IN_STYLED = re.compile(f"[{_DECEPTIVE}]")


def terminal_safe(text: str, styled: bool = False) -> str:
    """`text` with every such character shown as its escape (U+202E as \\u202e); `styled`: text
    rich has styled, whose C0 controls are its own."""
    return (_UNSAFE_IN_STYLED if styled else _UNSAFE_IN_TEXT).sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@functools.lru_cache(maxsize=1 << 14)
def natural_key(name: str) -> tuple:
    """scan_2 before scan_10: digit runs compare as numbers (split alternates text, digits).
    Kept for the last 16,384 names (about 6 MB): each render sorts every file of a folder, and
    splitting 30,000 names anew was a third of a render. Folders larger than that split anew
    (keeping 131,072 names cost 48 MB for the daemon's life)."""
    parts = _DIGIT_RUNS.split(name.casefold())
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


# What a status needs of a file, copied in one C-level call per record under the lock: the
# sorting and the entries are made after the lock is released (100,000 files: 0.1 s held, not 1 s).
_FILE_FIELDS = attrgetter("id", "name", "server_name", "state", "size", "server_received", "last_error",
                          "attempts", "next_attempt", "local_only", "archive", "sha256")
(_ID, _NAME, _SERVER_NAME, _STATE, _SIZE, _SENT, _ERROR, _ATTEMPTS, _NEXT, _LOCAL, _ARCHIVE, _SHA256) = range(12)


def mount_waits_locked(engine) -> dict:
    """What holds every session's uploads back now (the account, outages, fs360's own pacing):
    read once for all the sessions of one status."""
    return {"held_back": engine.trouble_reasons(), "rate_limit_waits": engine.pacing_waits()}


def capture_session_locked(session: SessionRecord, engine, pending_note=lambda session: "",
                           waits: dict | None = None) -> dict:
    """Needs engine.lock held: one consistent copy of what a session's status shows, as plain
    values (nothing that a later change of a record could alter); snapshot_of makes it a status.
    `pending_note(session)`: what its pending .create waits for (Markers.pending_note_locked);
    `waits`: mount_waits_locked's, when several sessions are captured at once."""
    files = [_FILE_FIELDS(f) for f in session.files.values() if not f.in_tree]
    if session.archive:
        files.append(_FILE_FIELDS(session.archive))
    project = session.project
    return {
        "now": time.time(),
        "session": session.name, "id": session.id, "upload_id": session.upload_id,
        "expires_at": session.expires_at, "sealed": session.sealed, "files": files,
        "unlinked": [f.name for f in session.unlinked],
        "refused_names": list(session.refused_names.items()),
        "tree_members": [(m.path, m.is_dir, m.size) for m in engine.tree.members_locked(session)],
        "archive_name": engine.tree.server_name_locked(session),
        "tree_files": [(f.name, f.state, f.size, f.last_error) for f in session.tree_files()],
        "project": None if project is None else {
            "state": project.state, "name": project.name, "status": project.status,
            "error": project.last_error, "record": dict(project.record or {}), "options": dict(project.options)},
        "notice": session.notice, "marker_refused": session.marker_refused,
        "marker_cancelled": session.marker_cancelled, "marker_pending": pending_note(session),
        "api_url": engine.settings.api_url, "default_privacy": engine.settings.default_privacy,
        "paused": engine.gate.paused,
        **(waits if waits is not None else mount_waits_locked(engine)),
    }


def settled_state(captures: list[dict]) -> list[dict] | None:
    """What a status of `captures` shows apart from the moment it is rendered; None while a
    file uploads (its progress and rate move) or waits to retry (its countdown moves). Two
    renders of one settled state differ only in `generated_at`, which keeps its width: in size,
    not at all."""
    if any(row[_STATE] in (UPLOADING, FAILED) for capture in captures for row in capture["files"]):
        return None
    return [{key: value for key, value in capture.items() if key != "now"} for capture in captures]


def snapshot_of(capture: dict, rates: RateBook | None = None) -> dict:
    """A session's status (doc/STATUS-JSON.md) from its capture; needs no lock."""
    now = capture["now"]
    # The tree's files are not uploads of their own: they are listed apart, under `tree_files`.
    archive = capture["files"][-1] if capture["files"] and capture["files"][-1][_ARCHIVE] else None
    rows = sorted((row for row in capture["files"] if row is not archive), key=lambda row: natural_key(row[_NAME]))
    files = [_file_entry(row, now, rates) for row in rows + ([archive] if archive else [])]
    project_info = _project_info(capture)
    uploadable = [f for f in files if not f["local_only"]]
    session_rate = rates.session_rate(capture["id"]) if rates is not None else None
    if not any(f["state"] == UPLOADING for f in uploadable):
        session_rate = None  # nothing is being sent: no rate (the last one would linger)
    waits = _rate_limit_waits(capture.get("rate_limit_waits", ()))
    totals = _totals(uploadable, session_rate, paced=any(w["endpoint"] == "put_file" for w in waits))
    return {
        "session": capture["session"],
        "upload_id": terminal_safe(capture["upload_id"]) if capture["upload_id"] else capture["upload_id"],
        "expires_at": _iso(capture["expires_at"]) if capture["expires_at"] else None,
        "sealed": capture["sealed"],
        "files": files,
        "deleted_but_held_by_server": sorted(capture["unlinked"]),
        "refused_names": [{"name": name, "reason": reason} for name, reason in capture["refused_names"]],
        "tree": _tree_entries(capture),
        "tree_files": [{"name": name, "state": state, "size": size, "error": error or None}
                       for name, state, size, error in sorted(capture["tree_files"], key=lambda f: natural_key(f[0]))],
        "totals": totals,
        "project": project_info,
        "paused": capture["paused"],  # ops: fs360 pause
        # What holds every upload back now (the account, an outage, a wait the server asked for).
        "held_back": capture["held_back"],
        # What fs360's own pacing within the server's documented budgets holds back now, and until when.
        "rate_limit_waits": waits,
        "generated_at": _iso(now),
    }


def _rate_limit_waits(waits) -> list[dict]:
    return [{"endpoint": w["endpoint"], "waiting": w["waiting"], "until": _iso(w["until"]),
             "until_seconds": w["until_seconds"], "reason": w["reason"]} for w in waits]


def _project_info(capture: dict) -> dict | None:
    project = capture["project"]
    project_info = None
    if project is not None:
        record = project["record"]
        errors = record.get("errors")
        project_info = {
            "state": project["state"],
            # The server's: shown, so made safe for a terminal (the registry keeps it as sent).
            "name": terminal_safe(project["name"]) if project["name"] else project["name"],
            "status": project["status"],
            "url": terminal_safe(project_page(capture["api_url"], project["name"]))
            if project["name"] and project["state"] == P_READY else None,
            "error": project["error"] or None,
            "waiting_for": capture["notice"] or None,
            "title": record.get("title"),
            "privacy_mode": project["options"].get("privacy_mode", capture["default_privacy"]),
            # Fields of .create fs360 does not know (a typo, mostly): sent as written all the same.
            "unknown_fields": unknown_create_fields(project["options"]),
            # Processing errors the server counted (an integer in the published record).
            "processing_errors": errors if isinstance(errors, int) and not isinstance(errors, bool) else None,
            # The ready record exactly as the server sent it.
            "record": record or None,
        }
    if capture["marker_refused"]:
        # The last .create written was refused: say why until a valid one is written.
        if project_info is None:
            project_info = {"state": "refused", "name": None, "status": 0, "url": None, "waiting_for": None,
                            "title": None, "error": capture["marker_refused"]}
        project_info["refused"] = capture["marker_refused"]
    if capture.get("marker_pending"):
        # A .create renamed into place (rsync), taken at its renamer's exit: say what it waits for.
        if project_info is None:
            project_info = {"state": "pending", "name": None, "status": 0, "url": None, "waiting_for": None,
                            "title": None, "error": None}
        project_info["pending"] = capture["marker_pending"]
    if project_info is None and capture.get("marker_cancelled"):
        # The request was cancelled by removing .create (rsync --delete does): say so, and what to do.
        project_info = {"state": "cancelled", "name": None, "status": 0, "url": None, "waiting_for": None,
                        "title": None, "error": None, "cancelled": capture["marker_cancelled"]}
    return project_info


def _totals(files: list[dict], rate: float | None, paced: bool = False) -> dict:
    """Counts and bytes of uploadable file entries; the ETA is of the bytes still on their way,
    none while uploads wait for the PUT budget (`paced`: the rate then says nothing of when the
    rest goes; the wait's line says when it ends)."""
    by_state: dict[str, int] = {}
    for f in files:
        by_state[f["state"]] = by_state.get(f["state"], 0) + 1
    on_the_way = sum(f["size"] - f["sent"] for f in files if f["state"] in BUSY_STATES)
    return {
        "files": len(files),
        "complete": by_state.get(COMPLETE, 0),
        "bytes": sum(f["size"] for f in files),
        "sent": sum(f["sent"] for f in files),
        "on_server": sum(f["on_server"] for f in files),
        "rate": round(rate) if rate else None,
        "eta_seconds": None if paced else eta_seconds(on_the_way, rate),
        "by_state": dict(sorted(by_state.items())),
        "need_you": sum(by_state.get(state, 0) for state in NEEDS_YOU_STATES),
    }


def mount_totals(sessions: list[dict], rate: float | None, paced: bool = False) -> dict:
    """The whole mount's totals, from its sessions' file entries."""
    return _totals([f for s in sessions for f in s["files"] if not f["local_only"]], rate, paced)


def _file_entry(row: tuple, now: float, rates: RateBook | None) -> dict:
    state, size, on_server = row[_STATE], row[_SIZE], row[_SENT]
    uploading = rates is not None and state == UPLOADING
    rate = rates.file_rate(row[_ID]) if uploading else None
    # Progress moves as the PUT's pieces go out; the server's part moves per acknowledged chunk.
    sent = min(size, max(on_server, (rates.gone_out(row[_ID]) or 0) if uploading else 0))
    entry = {
        "name": row[_NAME],
        "server_name": None if row[_LOCAL] else row[_SERVER_NAME],
        "state": state,
        "size": size,
        "sent": sent,
        "on_server": on_server,
        "rate": round(rate) if rate else None,
        "eta_seconds": eta_seconds(size - sent, rate),
        "error": row[_ERROR] or None,
        "attempts": row[_ATTEMPTS],
        "next_attempt_in": round(max(0.0, row[_NEXT] - now), 1) if state == "failed" else None,
        "local_only": row[_LOCAL],
    }
    if row[_ARCHIVE]:
        # The archive is generated, not stored: its sha256 is known once it is uploaded.
        entry["archive"] = True
        entry["sha256"] = row[_SHA256]
    return entry


def _tree_entries(capture: dict) -> list[dict]:
    """One entry per top-level folder of the tree: its file count and size, and the archive it
    goes up in."""
    entries: dict[str, dict] = {}
    for path, is_dir, size in capture["tree_members"]:
        top = path.partition("/")[0] + "/"
        entry = entries.setdefault(top, {"entry": top, "files": 0, "size": 0, "archive": capture["archive_name"]})
        entry["files"] += not is_dir
        entry["size"] += size
    return [entries[top] for top in sorted(entries)]


_ONE_LINE = json.JSONEncoder(ensure_ascii=False)


# Where the file list goes in the indented document, whatever the place of its key: a value no
# name holds (names have no NUL), replaced by the list made by the one-line encoder.
_FILES_PLACE = "\0files\0"
_FILES_PLACE_JSON = json.dumps(_FILES_PLACE)


def render_json(snapshot: dict) -> bytes:
    """Indented, with one line per file: json's indenting encoder is pure Python (10,000 files:
    80 ms), its one-line encoder C (15 ms). The file list is one call of the C encoder, broken
    before each `{"name": `: a `{"` never occurs inside an encoded string (its `"` is `\\"`)."""
    text = json.dumps({**snapshot, "files": _FILES_PLACE}, indent=2, ensure_ascii=False)
    if text.count(_FILES_PLACE_JSON) != 1:  # a field that holds the placeholder too: no shortcut
        text = json.dumps(snapshot, indent=2, ensure_ascii=False)
    elif snapshot["files"]:
        lines = _ONE_LINE.encode(snapshot["files"])[1:-1].replace('}, {"name": ', '},\n    {"name": ')
        text = text.replace(_FILES_PLACE_JSON, f'[\n    {lines}\n  ]')
    else:
        text = text.replace(_FILES_PLACE_JSON, "[]")
    return (text + "\n").encode("utf-8", "surrogateescape")


def render_text(snapshot: dict) -> bytes:
    lines = [f"session   {snapshot['session']}"]
    if snapshot.get("paused"):  # ops: fs360 pause
        lines.insert(0, PAUSED_LINE)
    lines[:0] = held_back_lines(snapshot)
    lines.append(f"upload_id {snapshot['upload_id'] or '(not opened yet)'}"
                 + (f"  expires {snapshot['expires_at']}" if snapshot["expires_at"] else ""))
    totals = snapshot["totals"]
    lines.append(f"files     {totals['complete']}/{totals['files']} complete, "
                 f"{human_bytes(totals['sent'])} of {human_bytes(totals['bytes'])} sent"
                 + (f", {human_bytes(totals['rate'])}/s" if totals["rate"] else "")
                 + (f", eta {human_duration(totals['eta_seconds'])}" if totals.get("eta_seconds") else ""))
    project = snapshot["project"]
    if project is not None and project.get("refused"):
        refused = project["refused"]
        # (A reason that already says what to do with .create is not told it twice.)
        lines.append(f"project   refused: {refused}" + ("" if "write .create" in refused
                                                           else " (write .create again once that is put right)"))
    if project is not None and project.get("pending"):
        lines.append(f"project   pending: {project['pending']}")
    if project is not None and project.get("cancelled"):
        lines.append(f"project   cancelled: {project['cancelled']}")
    if project is not None and project["state"] not in ("refused", "pending", "cancelled"):
        if project["state"] == "waiting":
            lines.append(f"project   requested; {project['waiting_for'] or 'creating'}")
        elif project["state"] == "failed":
            # A project the server made and then lost leaves the folder sealed: only a new one can
            # make another. One it refused to make: .create can be written again.
            todo = ("copy the files into a new folder to make a new project" if snapshot["sealed"] or project["name"]
                    else "remove .create and write a corrected one")
            lines.append(f"project   FAILED: {project['error']} ({todo})")
        else:
            lines.append(f"project   {project['name']}: {'ready' if project['status'] >= 100 else 'processing'} "
                         f"{bar(project['status'], 100)} {project['status']}%"
                         + (f"  {project['url']}" if project["url"] else ""))
            if project["processing_errors"]:
                lines.append(f"          {project['processing_errors']} processing error(s): see the project page")
        lines.append(f"          privacy: {PRIVACY_NAMES.get(project['privacy_mode'], project['privacy_mode'])}")
        if project.get("unknown_fields"):
            lines.append(f"          .create: unknown field(s) {', '.join(project['unknown_fields'])}: "
                         f"sent as written, the server may ignore them")
        if project["error"] and project["state"] != "failed":
            lines.append(f"          last error: {project['error']}")
    for refused in snapshot.get("refused_names", ()):
        lines.append(f"refused   {refused['name']}: {refused['reason']}")
    gone = snapshot["deleted_but_held_by_server"]
    gone_top, gone_tree = [n for n in gone if "/" not in n], [n for n in gone if "/" in n]
    if gone_top:
        lines.append("held      deleted here but held by the server (it cannot drop one file; "
                     "remove the folder to discard the session): " + ", ".join(gone_top))
    if gone_tree:
        lines.append("held      deleted here but held by the server in the tree's archive (as planned at .create, "
                     "sent or not yet: it cannot change, and the project waits; create them again with the same "
                     "content, as a re-run of the same tar -x or unzip -o does, or remove the folder to discard "
                     "the session): " + ", ".join(gone_tree))
    lines.append("")
    # .get: `fs360 status` also renders what mounts of an older fs360 publish.
    for entry in snapshot.get("tree", ()):
        count = f"{entry['files']} file" + ("s" if entry["files"] != 1 else "")
        lines.append(f"  {entry['entry']} {count}, {human_bytes(entry['size'])} → in {entry['archive']}")
    for f in snapshot.get("tree_files", ()):
        if f["state"] != IN_TREE:  # not whole yet (or not any more), with the reason
            lines.append(f"    {f['name']}  {f['state']}" + (f": {f['error']}" if f["error"] else ""))
    files = snapshot["files"]
    if len(files) > TEXT_LISTS_COMPLETE_UP_TO:
        files = [f for f in files if f["state"] != COMPLETE or f["local_only"]]
        lines.append(f"  ({len(snapshot['files']) - len(files):,} complete files not listed here: "
                     f"status.json lists every file)")
    for f in files:
        if f["local_only"]:
            lines.append(f"  {f['name']}  local only ({human_bytes(f['size'])}), never uploaded: {local_only_why(f['name'])}")
            continue
        shown = f["name"] if f["server_name"] in (None, f["name"]) else f"{f['name']} → {f['server_name']}"
        line = (f"  {shown}  {shown_state(f, snapshot.get('paused')):<11} {bar(f['sent'], f['size'])} "
                f"{human_bytes(f['sent'])}/{human_bytes(f['size'])}")
        if f["rate"]:
            line += f"  {human_bytes(f['rate'])}/s"
        if f["eta_seconds"] is not None:
            line += f"  eta {human_duration(f['eta_seconds'])}"
        lines.append(line)
        if f["error"]:
            retry = f", retry {f['attempts']} in {f['next_attempt_in']}s" if f["next_attempt_in"] is not None else ""
            lines.append(f"      {'why' if f['state'] in NEEDS_YOU_STATES else 'error'}: {f['error']}{retry}")
    return (terminal_safe("\n".join(lines)) + "\n").encode("utf-8", "surrogateescape")


def render_root(snapshots: list[dict]) -> bytes:
    if not snapshots:
        return b"no sessions: make a folder and copy files into it\n"
    lines = [PAUSED_LINE] if any(s.get("paused") for s in snapshots) else []  # ops: fs360 pause
    lines[:0] = held_back_lines(snapshots[0])
    for snap in snapshots:
        totals = snap["totals"]
        project = snap["project"]
        what = ""
        if project is not None and project["state"] == "pending":
            what = "  .create pending"
        elif project is not None and project["state"] == "cancelled":
            what = "  project request cancelled (.create removed)"
        elif project is not None:
            what = f"  project {project['name'] or '(waiting)'} {project['status']}%"
        lines.append(f"{snap['session']}: {totals['complete']}/{totals['files']} files complete, "
                     f"{human_bytes(totals['sent'])}/{human_bytes(totals['bytes'])}{what}")
    return (terminal_safe("\n".join(lines)) + "\n").encode("utf-8", "surrogateescape")


SESSION_RENDERERS = {"status": render_text, "status.json": render_json}


def held_back_lines(snapshot: dict) -> list[str]:
    """The mount's waits, at the top: what holds uploads back, and fs360's own pacing."""
    return [f"held back: {reason}" for reason in snapshot.get("held_back", ())] + \
        [wait["reason"] for wait in snapshot.get("rate_limit_waits", ())]


def bar(done: int, total: int) -> str:
    fraction = 1.0 if total <= 0 else min(1.0, done / total)
    filled = int(fraction * BAR_WIDTH)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_duration(seconds: float) -> str:
    """'45s', '3m20s', '2h05m': an ETA or an elapsed time."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def local_only_why(name: str) -> str:
    """Why a scratch file stays here, in words: a top-level `Makefile` or `20240101` looks like an
    editor's temporary copy, and the server would refuse it anyway."""
    *folders, basename = name.split("/")
    if any(part.startswith(".") for part in folders):
        return "in a dot-folder, which stays local"
    if "." not in basename:
        return "a scratch name, and the server takes no file without an extension"
    return "a scratch name (dot-files, *.part, *.tmp, ...); rename it to upload it"


def shown_state(entry: dict, paused: bool | None) -> str:
    """A file's state as a person reads it: an upload held by `fs360 pause` is "paused", not
    "uploading" with nothing moving."""
    if paused and entry["state"] in ("uploading", "pending"):
        return "paused"
    return entry["state"]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def summary_line(snapshot: dict) -> str:
    """One line for the whole mount (systemd's STATUS=): files by state, bytes, rate."""
    totals = snapshot["totals"]
    count = totals["by_state"]
    line = (f"{count.get('uploading', 0)} uploading, {count.get('pending', 0)} pending, "
            f"{count.get('failed', 0)} failed, {totals['complete']}/{totals['files']} complete, "
            f"{human_bytes(totals['sent'])}/{human_bytes(totals['bytes'])}")
    if totals["rate"]:
        line += f", {human_bytes(totals['rate'])}/s"
    if totals["need_you"]:
        line += f", {totals['need_you']} need you (fs360 status)"
    return ("paused; " if snapshot["paused"] else "") + line


class RenderedStatus:
    """The content of the status files. A render younger than STATUS_SIZE_TTL is reused for
    getattr and listings, so their size is the real one and `ls -l` of many sessions does not
    render each of them again; an open always renders. An older one is reused too while its
    session is settled and shows the same state (see `settled_state`): its size is still the
    real one.

    In two steps, so that FUSE callbacks never wait on a render: `prepare_locked` copies what
    the status shows (with engine.lock held, one consistent state), and the returned callables
    sort, build and render it after the lock is released. The files of one call (a listing's
    `status` and `status.json`) share that copy and the status built from it."""

    def __init__(self, engine, pending_note=lambda session: ""):
        """`pending_note(session)`, with engine.lock held: what its pending .create waits for."""
        self.engine = engine
        self._pending_note = pending_note
        self.rates = RateBook(engine.listeners)
        # Rendered status files by (session name or "", file name): (monotonic time, content, the
        # settled state it shows or None).
        self._cache: dict[tuple[str, str], tuple[float, bytes, list | None]] = {}

    def prepare_locked(self, session: SessionRecord | None, names: tuple[str, ...], fresh: bool = False) -> list:
        """Callables giving the content of each status file of `names` of `session` (None: the
        root one). Needs engine.lock held; call the results without it."""
        now = time.monotonic()
        prefix = session.name if session is not None else ""
        cached = {} if fresh else {name: self._cache.get((prefix, name)) for name in names}
        cached = {name: c for name, c in cached.items() if c is not None}
        if all(name in cached and now - cached[name][0] < STATUS_SIZE_TTL for name in names):
            return [lambda content=cached[name][1]: content for name in names]
        captures = self._captures_locked(mount_waits_locked(self.engine)) if session is None \
            else [capture_session_locked(session, self.engine, self._pending_note)]
        # Each built once, by the first render that needs it.
        state = functools.cache(lambda: settled_state(captures))
        snapshots = functools.cache(lambda: [snapshot_of(capture, self.rates) for capture in captures])
        if len(self._cache) > 4 * len(self.engine.registry.sessions) + 8:
            self._cache.clear()  # sessions were renamed or removed: drop the old keys

        def rendered(name: str) -> bytes:
            old = cached.get(name)
            if old is not None and (now - old[0] < STATUS_SIZE_TTL or (old[2] is not None and old[2] == state())):
                self._cache[(prefix, name)] = (now, old[1], old[2])
                return old[1]
            content = render_root(snapshots()) if session is None else SESSION_RENDERERS[name](snapshots()[0])
            self._cache[(prefix, name)] = (now, content, state())
            return content
        return [functools.partial(rendered, name) for name in names]

    def _captures_locked(self, waits: dict) -> list[dict]:
        sessions = sorted(self.engine.registry.sessions.values(), key=lambda s: natural_key(s.name))
        return [capture_session_locked(s, self.engine, self._pending_note, waits) for s in sessions]

    def mount_snapshot(self, history: bool = False) -> dict:
        """The whole mount as one document (doc/STATUS-JSON.md); takes engine.lock itself.
        `history`: with the rate of each HISTORY_BUCKET of the last hour (the dashboard's plot)."""
        with self.engine.lock:
            mount_waits = mount_waits_locked(self.engine)
            captures = self._captures_locked(mount_waits)
        sessions = [snapshot_of(capture, self.rates) for capture in captures]
        gate = self.engine.gate
        uploading = any(f["state"] == UPLOADING for s in sessions for f in s["files"])
        rate = self.rates.mount_rate() if uploading else None
        waits = _rate_limit_waits(mount_waits["rate_limit_waits"])
        snapshot = {
            "schema": SCHEMA_VERSION,
            "generated_at": _iso(time.time()),
            "paused": gate.paused,
            "bwlimit": gate.bwlimit,
            "proxy_body_limit": self.engine.transfer.chunk_sizes.learned_limit,
            "totals": mount_totals(sessions, rate, paced=any(w["endpoint"] == "put_file" for w in waits)),
            "rate_limit_waits": waits,
            "sessions": sessions,
        }
        if history:
            snapshot["rate_history"] = [{"at": _iso(at), "rate": round(value)}
                                        for at, value in self.rates.history_points()]
        return snapshot
