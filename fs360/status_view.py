"""The terminal views of `fs360 status` and `fs360 unmount --wait`, drawn with rich.

Every view is built from mount snapshots (doc/STATUS-JSON.md, the daemon's `status` answer)
and fits the terminal: columns shrink (names are cut with an ellipsis, never wrapped), and a
view given a height (`--watch`) shows the rows that matter most (uploading, retrying and
refused files first) with a count of the rest. Names are in natural order (scan_2 before
scan_10).
"""

from __future__ import annotations

import sys
import time

from rich import box
from rich.console import Group
from rich.cells import cell_len
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .fs.status import (BUSY_STATES, NEEDS_YOU_STATES, human_bytes, human_duration, natural_key, shown_state,
                        terminal_safe)

STATE_STYLES = {"complete": "green", "uploading": "cyan", "paused": "magenta", "failed": "yellow",
                "pending": "", "writing": "dim", "closed": "dim", "local": "dim", "in tree": "dim",
                **{state: "bold red" for state in NEEDS_YOU_STATES}}
# Files shown first when not all fit: the ones moving or needing the user.
ROW_PRIORITY = {"uploading": 0, "failed": 1, **{state: 2 for state in NEEDS_YOU_STATES}}
BAR_WIDTH = 10
# Lines of a view besides its table rows: header, table heading, "… more", a blank.
CHROME_LINES = 4


# Columns that keep their width; the others (names, reasons) shrink with an ellipsis.
FIXED_WIDTHS = {"Files": 7, "State": 11, "Sent": 13, "Rate": 8, "ETA": 6, "Project": 10}
# Narrower than this, the per-file view has no bars and no reason column: the reasons of the
# files retrying or needing the user follow the table, one line each.
FILE_BARS_FROM = 120


def displayable(doc):
    """A snapshot with every string made terminal-safe (fs.status.terminal_safe) before any view
    lays it out: a name's escapes (a right-to-left override shown as \\u202e) then count in the
    widths rich measures, and its row keeps to its columns."""
    if isinstance(doc, str):
        return terminal_safe(doc)
    if isinstance(doc, dict):
        return {key: displayable(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [displayable(value) for value in doc]
    return doc


def _table(columns: list[str], rows: list[list], width: int) -> Table:
    """A table exactly as wide as `width` allows: the fixed columns keep their width, the others
    (names, reasons) share the rest, each up to what its longest cell needs, the first one (the
    name) at least half of it when they must be cut."""
    fixed = {c: FIXED_WIDTHS.get(c, BAR_WIDTH if c == "Progress" else None) for c in columns}
    flexible = [i for i, c in enumerate(columns) if fixed[c] is None]
    natural = {i: max([cell_len(columns[i])] + [_cell_len(row[i]) for row in rows]) for i in flexible}
    room = width - sum(w for w in fixed.values() if w) - 2 * (len(columns) - 1)
    widths = dict(fixed)
    if flexible:
        first, rest = flexible[0], flexible[1:]
        wanted_rest = sum(natural[i] for i in rest)
        share = max(natural[first] if natural[first] + wanted_rest <= room else
                    min(natural[first], max(room // 2, room - wanted_rest)), 4)
        widths[columns[first]] = share
        for i in rest:
            widths[columns[i]] = max(min(natural[i], room - share), 4)
            share += widths[columns[i]]
    # Between columns: one space of padding and the box's one-space divider.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=False, padding=(0, 1, 0, 0))
    for name in columns:
        table.add_column(name, justify="right" if name in ("Files", "Sent", "Rate", "ETA") else "left",
                         no_wrap=True, overflow="ellipsis", width=widths[name])
    for row in rows:
        table.add_row(*row)
    return table


def _cell_len(cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell) if isinstance(cell, str) else BAR_WIDTH


def _bar(done: int, total: int) -> ProgressBar | str:
    if total <= 0:
        return ""
    return ProgressBar(total=total, completed=min(done, total), width=BAR_WIDTH)


def short_bytes(n: float) -> str:
    """'512B', '97.7K', '28.6M', '139G' (powers of 1024, as ls -h): a table's cells stay narrow."""
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" or n >= 100 else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.0f}T"


def _rate(value) -> str:
    return f"{short_bytes(value)}/s" if value else ""


def _eta(value) -> str:
    return human_duration(value) if value else ""


def _sent(done: int, total: int) -> str:
    """'' for nothing at all, else '8.0M/28.6M'."""
    return f"{short_bytes(done)}/{short_bytes(total)}" if total > 0 else ""


def mount_header(doc: dict) -> Text:
    """One line: what the mount does now, what needs the user, its rate, ETA, bandwidth limit, and
    last (a long path is what the width cuts) the mountpoint."""
    totals = doc["totals"]
    doing = "paused (fs360 resume)" if doc["paused"] else (
        "uploading" if totals["by_state"].get("uploading") else "idle")
    text = Text(doing, style="bold magenta" if doc["paused"] else "bold")
    parts = [f"{totals['complete']}/{totals['files']} files"] + ([_sent(totals["sent"], totals["bytes"])]
                                                                 if totals["bytes"] else [])
    if totals["need_you"]:
        parts.append(Text(f"{totals['need_you']} need you", style="bold red"))
    if totals["rate"]:
        parts.append(_rate(totals["rate"]))
    if totals["eta_seconds"]:
        parts.append(f"eta {_eta(totals['eta_seconds'])}")
    if doc["bwlimit"] not in ("off", "", None):
        parts.append(f"bwlimit {doc['bwlimit']}")
    parts.append(doc["mountpoint"])
    for part in parts:
        text.append(" · ", style="dim")
        text.append(part if isinstance(part, Text) else Text(part))
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def summary_view(docs: list[dict], width: int = 200) -> Table:
    """`fs360 status`: one row per mount."""
    rows = []
    for doc in sorted(map(displayable, docs), key=lambda d: natural_key(d["mountpoint"])):
        if "error" in doc:
            rows.append([doc["mountpoint"], "", "", "", "", "", Text("not answering", style="bold red")])
            continue
        totals = doc["totals"]
        state = Text("paused", style="magenta") if doc["paused"] else Text(
            "uploading" if totals["by_state"].get("uploading") else "idle")
        if totals["need_you"]:
            state = Text(f"{totals['need_you']} need you", style="bold red")
        rows.append([doc["mountpoint"], f"{totals['complete']}/{totals['files']}",
                     _bar(totals["sent"], totals["bytes"]), _sent(totals["sent"], totals["bytes"]),
                     _rate(totals["rate"]), _eta(totals["eta_seconds"]), state])
    return _table(["Mount", "Files", "Progress", "Sent", "Rate", "ETA", "State"], rows, width)


def _project_cell(project: dict | None) -> Text:
    if project is None:
        return Text("no .create", style="dim")
    if project.get("refused"):
        return Text("refused", style="bold red")
    if project["state"] == "pending":
        return Text(".create pending")
    if project["state"] == "cancelled":
        return Text("cancelled", style="yellow")
    if project["state"] == "waiting":
        return Text("requested")
    if project["state"] == "failed":
        return Text("failed", style="bold red")
    if project["status"] >= 100:
        return Text("ready", style="green")
    return Text(f"{project['status']}% done")


def _fit(rows: list, height: int | None, key=None) -> tuple[list, int]:
    """The rows to show in `height` lines (None: all), the most important first by `key`, kept
    in their own order; and how many were left out."""
    if height is None or len(rows) <= height:
        return rows, 0
    keep = max(height - 1, 0)  # one line says how many more
    chosen = set(sorted(range(len(rows)), key=lambda i: (key(rows[i]) if key else 0, i))[:keep])
    return [row for i, row in enumerate(rows) if i in chosen], len(rows) - keep


def sessions_view(doc: dict, height: int | None = None, width: int = 200) -> Group:
    """`fs360 status MOUNTPOINT`: the mount's line, one row per session, then what needs the user."""
    doc = displayable(doc)
    problems = needs_you_lines(doc)
    links = [Text.assemble("  ", (s["session"], "bold"), " → ", s["project"]["url"])
             for s in doc["sessions"] if s["project"] and s["project"].get("url")]
    budget = None if height is None else max(height - CHROME_LINES - min(len(problems), 3) - min(len(links), 2)
                                             - len(doc.get("rate_limit_waits", ())), 1)
    sessions, more = _fit(doc["sessions"], budget, key=lambda s: 0 if s["totals"]["need_you"] or s["totals"]["rate"] else 1)
    rows = [[s["session"], f"{s['totals']['complete']}/{s['totals']['files']}",
             _bar(s["totals"]["sent"], s["totals"]["bytes"]), _sent(s["totals"]["sent"], s["totals"]["bytes"]),
             _rate(s["totals"]["rate"]), _eta(s["totals"]["eta_seconds"]), _project_cell(s["project"])]
            for s in sessions]
    parts = [mount_header(doc)]
    # fs360's own pacing within the server's documented budgets: what waits, and until when.
    parts += [_one_line(wait["reason"]) for wait in doc.get("rate_limit_waits", ())]
    if rows:
        parts.append(_table(["Session", "Files", "Progress", "Sent", "Rate", "ETA", "Project"], rows, width))
    if more:
        parts.append(_one_line(f"… and {more} more session(s): fs360 status --json {doc['mountpoint']}"))
    if not doc["sessions"]:
        parts.append(Text("no sessions: make a folder and copy files into it", style="dim"))
    if height is not None:
        for line in links + problems:  # one line each, as counted
            line.no_wrap, line.overflow = True, "ellipsis"
    parts += _limited(links, 2 if height is not None else None, "project link(s)")
    parts += _limited(problems, 3 if height is not None else None, "more: fs360 status --files")
    return Group(*parts)


def _limited(lines: list[Text], count: int | None, what: str) -> list[Text]:
    if count is None or len(lines) <= count:
        return lines
    return lines[:count - 1] + [_one_line(f"  … {len(lines) - count + 1} {what}")]


def _one_line(text: str) -> Text:
    """A dim note, cut to the width: a view counted in lines must not wrap."""
    return Text(text, style="dim", no_wrap=True, overflow="ellipsis")


def needs_you_lines(doc: dict) -> list[Text]:
    """One line per file (or .create) that will not reach the server without the user: what
    happened and what to do."""
    lines = []
    for s in doc["sessions"]:
        project = s["project"]
        if project and project.get("refused"):
            lines.append(Text.assemble(("  ✗ ", "bold red"), (f"{s['session']}/.create", "bold"),
                                       f": {project['refused']}"))
        elif project and project["state"] == "failed":
            lines.append(Text.assemble(("  ✗ ", "bold red"), (f"{s['session']}/.create", "bold"),
                                       f" project failed: {project['error']}"))
        for f in s["files"]:
            if f["state"] in NEEDS_YOU_STATES:
                lines.append(Text.assemble(("  ✗ ", "bold red"), (f"{s['session']}/{f['name']}", "bold"),
                                           f" {f['state']}: {f['error'] or 'see the log'}"))
    return lines


def files_view(doc: dict, height: int | None = None, width: int = 200) -> Group:
    """`fs360 status --files MOUNTPOINT`: one row per file, sessions in turn."""
    doc = displayable(doc)
    wide = width >= FILE_BARS_FROM
    below = [] if wide else retrying_lines(doc) + needs_you_lines(doc)
    entries = [(s, f) for s in doc["sessions"] for f in s["files"]]
    budget = None if height is None else max(height - CHROME_LINES - min(len(below), 3), 1)
    shown, more = _fit(entries, budget, key=lambda entry: ROW_PRIORITY.get(entry[1]["state"], 3))
    rows = []
    for session, f in shown:
        state = "local only" if f["local_only"] else shown_state(f, doc["paused"])
        name = f"{session['session']}/{f['name']}"
        if f["server_name"] not in (None, f["name"]):
            name += f" → {f['server_name']}"
        why = f["error"] or ""
        if f["next_attempt_in"] is not None:
            why = f"retry in {f['next_attempt_in']:.0f}s: {why}"
        rows.append([name, Text(state, style=STATE_STYLES.get(state, "")),
                     *([_bar(f["sent"], f["size"])] if wide else []),
                     _sent(f["sent"], f["size"]), _rate(f["rate"]), _eta(f["eta_seconds"]), *([why] if wide else [])])
    columns = ["File", "State", *(["Progress", "Sent", "Rate", "ETA", "Why"] if wide else ["Sent", "Rate", "ETA"])]
    parts = [mount_header(doc), _table(columns, rows, width)]
    if more:
        parts.append(_one_line(f"… and {more} more file(s); the whole list: fs360 status --files "
                               f"{doc['mountpoint']} | less"))
    if not entries:
        parts.append(Text("no files yet", style="dim"))
    if height is not None:
        for line in below:
            line.no_wrap, line.overflow = True, "ellipsis"
    return Group(*parts, *_limited(below, 3 if height is not None else None, "more: widen the terminal"))


def retrying_lines(doc: dict) -> list[Text]:
    """One line per file waiting to be retried, with why."""
    return [Text.assemble(("  ↻ ", "yellow"), (f"{s['session']}/{f['name']}", "bold"),
                          f" retry in {f['next_attempt_in'] or 0:.0f}s: {f['error'] or ''}")
            for s in doc["sessions"] for f in s["files"] if f["state"] == "failed"]


def watch(console, fetch, render, gone, interval: float) -> list[str]:
    """`status --watch`: redraws `render(fetch())` in place every `interval` seconds, cut to the
    terminal's height, until `gone()` names a mount no longer mounted; returns those."""
    from rich.live import Live
    with Live(console=console, auto_refresh=False, screen=False, vertical_overflow="crop") as live:
        while True:
            ended = gone()
            if ended:
                live.stop()
                return ended
            try:
                live.update(render(fetch()), refresh=True)
            except OSError:
                pass  # unmounting right now: the next round says so
            time.sleep(interval)


# --- unmount --wait --------------------------------------------------------------------------


class _TerminalSafe:
    """A text stream that writes what rich draws with names' terminal-unsafe characters escaped
    (fs.status.terminal_safe): a folder or file name is the user's, or an archive's (unzip into
    the mount), and must not act on the terminal. The views escape their snapshots before the
    layout (`displayable`); this catches any other text printed through the console. rich's own
    escape sequences are C0, untouched."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(terminal_safe(text, styled=True))

    def __getattr__(self, name):  # flush, isatty, fileno, encoding: the stream's own
        return getattr(self._stream, name)


def terminal_console(stderr: bool = False):
    """The rich Console of the CLI's views: to stdout or stderr, names made terminal-safe."""
    from rich.console import Console
    return Console(file=_TerminalSafe(sys.stderr if stderr else sys.stdout), highlight=False)


def wait_for_queue(fetch, timeout: float | None) -> dict | None:
    """Waits until no file is on its way (`fetch()` gives the mount's snapshot), drawing one line
    that fits the terminal (a line when it changes, at most every 2 s, when stderr is not one);
    returns the last snapshot (displayable), or None past `timeout`."""
    from rich.live import Live
    deadline = None if timeout is None else time.monotonic() + timeout
    console = terminal_console(stderr=True)
    interactive = console.is_terminal
    last_printed = ""
    with Live(console=console, auto_refresh=False, transient=True) if interactive else _Nothing() as live:
        while True:
            doc = displayable(fetch())
            line = wait_line(doc, console.width)
            if live is not None:
                live.update(line, refresh=True)
            elif line.plain != last_printed:
                print(line.plain, file=console.file, flush=True)  # (its stream makes names safe)
                last_printed = line.plain
            if not any(doc["totals"]["by_state"].get(state) for state in BUSY_STATES):
                return doc
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.5 if interactive else 2.0)


class _Nothing:
    """A context that gives None: no live display when stderr is not a terminal."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def wait_line(doc: dict, width: int) -> Text:
    """The one line `unmount --wait` redraws: a bar over the files still on their way and those
    done, never over files that need the user (they are named at the end)."""
    files = [f for s in doc["sessions"] for f in s["files"] if not f["local_only"]]
    counted = [f for f in files if f["state"] not in NEEDS_YOU_STATES]
    total = sum(f["size"] for f in counted)
    sent = sum(f["sent"] for f in counted)
    busy = doc["totals"]["files"] - doc["totals"]["complete"] - doc["totals"]["need_you"]
    parts = [f"{busy} file(s) to go", _sent(sent, total)]
    if doc["totals"]["rate"]:
        parts.append(_rate(doc["totals"]["rate"]))
    if doc["totals"]["eta_seconds"]:
        parts.append(f"eta {_eta(doc['totals']['eta_seconds'])}")
    if doc["paused"]:
        parts.append("paused: fs360 resume")
    retrying = [f for f in files if f["state"] == "failed"]
    if retrying:
        parts.append(f"retrying {retrying[0]['name']}: {retrying[0]['error']}")
    bar_width = max(0, min(30, width // 4))
    bar = _text_bar(sent, total, bar_width) if bar_width >= 5 else ""
    line = Text(f"{bar} " if bar else "") + Text("  ".join(parts))
    line.truncate(max(width - 1, 10), overflow="ellipsis")
    return line


def _text_bar(done: int, total: int, width: int) -> str:
    filled = width if total <= 0 else int(min(1.0, done / total) * width)
    return "━" * filled + "─" * (width - filled)


def wait_summary(doc: dict, elapsed: float) -> list[Text]:
    """What `unmount --wait` says at the end: what was uploaded, then each file that needs the user."""
    totals = doc["totals"]
    lines = [Text(f"{totals['complete']}/{totals['files']} file(s) on the server, "
                  f"{human_bytes(totals['sent'])} sent, waited {human_duration(elapsed)}")]
    problems = needs_you_lines(doc)
    if problems:
        lines.append(Text(f"{len(problems)} not uploaded (they stay in the journal; the reasons say what to do):",
                          style="bold red"))
        lines += problems
    return lines
