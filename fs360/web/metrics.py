"""/metrics in the Prometheus text format (version 0.0.4), every name starting with `fs360_`.

Read off the mount's snapshot (files by state, sessions, the rate, the queue) and the
daemon's counters (bytes sent, progress events, requests by endpoint and status,
pacing waits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Every state a file can be listed in, so each series exists from the start (at 0).
FILE_STATES = ("writing", "closed", "pending", "uploading", "failed", "complete", "rejected", "held",
               "interrupted", "lost", "local", "in tree")


@dataclass
class Counters:
    """What the daemon counted since it started."""
    bytes_sent: int = 0
    events: dict[str, int] = field(default_factory=dict)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    pacing_waits: int = 0
    pacing_wait_seconds: float = 0.0
    bwlimit_bytes_per_second: float | None = None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}" if labels else ""


class _Writer:
    def __init__(self):
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        self.lines += [f"# HELP fs360_{name} {help_text}", f"# TYPE fs360_{name} {kind}"]
        self.lines += [f"fs360_{name}{_labels(**labels)} {_number(value)}" for labels, value in samples]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_metrics(snapshot: dict, counters: Counters) -> str:
    totals = snapshot["totals"]
    files = [f for s in snapshot["sessions"] for f in s["files"] if not f["local_only"]]
    tree = [f for s in snapshot["sessions"] for f in s.get("tree_files", ())]
    by_state = dict.fromkeys(FILE_STATES, 0)
    for f in files + tree:
        by_state[f["state"]] = by_state.get(f["state"], 0) + 1
    out = _Writer()
    out.metric("bytes_sent_total", "counter", "Bytes of PUT bodies sent since the daemon started.",
               [({}, counters.bytes_sent)])
    out.metric("chunks_acknowledged_total", "counter", "PUTs whose bytes the server acknowledged.",
               [({}, counters.events.get("chunk_acknowledged", 0))])
    out.metric("files", "gauge", "Files of the mount by state (a folder tree's files as 'in tree').",
               [({"state": state}, count) for state, count in sorted(by_state.items())])
    out.metric("files_uploaded_total", "counter", "Files the server holds complete, since the daemon started.",
               [({}, counters.events.get("file_complete", 0))])
    out.metric("files_refused_total", "counter", "Files the server refused for good, since the daemon started.",
               [({}, counters.events.get("file_rejected", 0))])
    out.metric("retries_total", "counter", "Upload attempts that failed and were scheduled again.",
               [({}, counters.events.get("file_failed", 0))])
    out.metric("queue_length", "gauge", "Files waiting for an upload worker (pending, or failed and retried).",
               [({}, by_state["pending"] + by_state["failed"])])
    out.metric("sessions", "gauge", "Sessions (folders at the mount's root).", [({}, len(snapshot["sessions"]))])
    out.metric("bytes", "gauge", "Bytes of the mount's uploadable files, and of them the server holds.",
               [({"of": "files"}, totals["bytes"]), ({"of": "server"}, totals["sent"])])
    out.metric("upload_rate_bytes_per_second", "gauge", "Upload rate over the last 20 s (0 when idle).",
               [({}, totals["rate"] or 0)])
    out.metric("requests_total", "counter", "Requests the daemon sent, by endpoint and HTTP status ('error': no answer).",
               [({"endpoint": endpoint, "status": status}, count)
                for (endpoint, status), count in sorted(counters.requests.items())])
    out.metric("pacing_waits_total", "counter", "Requests that waited for the endpoint's documented rate budget.",
               [({}, counters.pacing_waits)])
    out.metric("pacing_wait_seconds_total", "counter", "Seconds requests waited for their rate budget.",
               [({}, counters.pacing_wait_seconds)])
    out.metric("paused", "gauge", "1 while uploads are paused (fs360 pause).", [({}, int(snapshot["paused"]))])
    out.metric("bwlimit_bytes_per_second", "gauge", "The bandwidth limit in force (0: none).",
               [({}, counters.bwlimit_bytes_per_second or 0)])
    projects = [(s["session"], s["project"]) for s in snapshot["sessions"] if s["project"] and s["project"].get("name")]
    out.metric("project_progress_percent", "gauge", "Server-side processing of each session's project.",
               [({"session": name, "project": p["name"]}, p["status"]) for name, p in projects])
    return "\n".join(out.lines) + "\n"
