"""Local emulator of the 360-for-you upload API (see doc/EMULATOR.md).

Standalone: imports nothing else from fs360, and only the stdlib, except the vendor profile
(``--profile vendor``), which needs werkzeug: the extra ``fs360[vendor-emulator]``.

    python -m fs360.emulator --port 8360 --data-dir /tmp/emu

The first stdout line is the base URL (``http://HOST:PORT/api/v1``).  Runs
until SIGINT/SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import shutil
import signal
import sys
import tempfile
import threading

__all__ = ["main", "build_parser"]


class _Stop(BaseException):
    """Raised by the SIGINT/SIGTERM handler. Not an Exception: socketserver hands every Exception
    raised while it accepts a connection to handle_error (which says nothing), so a signal that
    arrived just then was swallowed and the emulator served on until it was killed."""


def _parse_key(spec: str):
    key, sep, scopes = spec.partition(":")
    if not key:
        raise argparse.ArgumentTypeError(f"bad --key {spec!r}")
    if not sep:
        return key, {"projects:write", "projects:read"}
    return key, {s.strip() for s in scopes.split(",") if s.strip()}


def _positive_int(v):
    n = int(v)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def build_parser() -> argparse.ArgumentParser:
    from .profiles import PROFILES
    from .server import GiB

    p = argparse.ArgumentParser(prog="fs360 emulator", description="Local emulator of the 360-for-you upload API.")
    p.add_argument("--profile", choices=sorted(PROFILES), default="default",
                   help="default: api.md Part B; vendor: every Part C behaviour of the real service at once")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8360,
                   help="port to listen on (default 8360; 0: a free one, printed as the first line)")
    p.add_argument("--data-dir", help="state directory (default: a temporary one, removed at exit)")
    p.add_argument("--key", action="append", type=_parse_key, default=[],
                   help="API key, repeatable: sk_x (both scopes) or sk_y:projects:read[,projects:write]")
    p.add_argument("--processing-seconds", type=float, default=10.0,
                   help="seconds a project takes to reach 100%% (default 10)")
    p.add_argument("--no-rate-limits", action="store_true", help="no documented rate limits (never a 429)")
    p.add_argument("--rate-window-scale", type=float, default=1.0,
                   help="multiply every rate limit's window by this (tests shorten an hour)")
    p.add_argument("--discard", action="store_true", help="keep only sizes and a running sha256")
    p.add_argument("--no-sha256", action="store_true",
                   help="with --discard: do not keep a running sha256 (sha256 stays null; fastest ingest)")
    p.add_argument("--max-file-size", type=_positive_int, default=100 * GiB,
                   help="per-file cap in bytes (413 file_too_large past it; default 100 GiB)")
    p.add_argument("--max-session-size", type=_positive_int, default=500 * GiB,
                   help="per-session cap in bytes (413 session_too_large past it; default 500 GiB)")
    p.add_argument("--allowed-extensions", default=None,
                   help="comma-separated (default: the profile's list, see doc/EMULATOR.md)")
    p.add_argument("--session-lifetime", type=float, default=259200.0,
                   help="seconds an upload session lives (default 259200, three days)")
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="seconds a connection may stay silent before the server drops it (default 60)")
    p.add_argument("--fault", help="fault spec JSON (see fs360.emulator.faults)")
    p.add_argument("--seed", type=int, default=None, help="seed for generated ids")
    p.add_argument("--quota-exceeded", action="store_true", help="402 on POST /uploads and POST /projects")
    p.add_argument("--tariff-forbids-upload", action="store_true", help="403 tariff_forbids_upload on POST /uploads")
    p.add_argument("--project-tariff", action="store_true", help="403 tariff on POST /projects")
    p.add_argument("--project-name-collision", action="store_true", help="project name differs from upload_id")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM; with --tls-key)")
    p.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    p.add_argument("--quiet", action="store_true", help="print only the base URL")
    p.add_argument("--log", action="store_true", help="log each request to stderr (never the key)")
    p.add_argument("--exit-with-parent", type=int, metavar="PID", default=0,
                   help="end when process PID (the one that started it: an fs360 daemon) ends, killed too")
    return p


def _exit_with_parent(pid: int) -> None:
    """The embedded emulator of `fs360 mount --local` ends with its daemon, even one killed with
    SIGKILL (it was left running, and the next mount started a second one on the same data)."""
    import ctypes
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != pid:  # it died before the prctl: no signal will come
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    from .faults import FaultSpecError, parse_spec
    from .profiles import PROFILES, ProfileUnavailable
    from .server import make_server

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent(args.exit_with_parent)
    # Many short requests on threads: hand the GIL over quickly, as a real server's
    # independent workers would not wait on each other.
    sys.setswitchinterval(0.0005)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.rate_window_scale <= 0:
        parser.error("--rate-window-scale must be > 0")
    if args.idle_timeout is not None and args.idle_timeout <= 0:
        parser.error("--idle-timeout must be > 0")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: a port is a number from 0 (a free one) to 65535")
    faults = None
    if args.fault:
        try:
            faults = parse_spec(json.loads(args.fault))
        except (ValueError, FaultSpecError) as e:
            parser.error(f"--fault: {e}")
    if args.allowed_extensions is None:
        exts = list(PROFILES[args.profile].extensions)
    else:
        exts = [e.strip().lower().lstrip(".") for e in args.allowed_extensions.split(",") if e.strip()]
    tmp = None
    data_dir = args.data_dir
    if not data_dir:
        tmp = data_dir = tempfile.mkdtemp(prefix="fs360-emulator-")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        parser.error(f"--data-dir {data_dir}: cannot make it ({e.strerror or e})")
    keys = dict(args.key) if args.key else {"sk_local_demo": {"projects:write", "projects:read"}}

    cfg = argparse.Namespace(
        profile=args.profile, host=args.host, port=args.port, data_dir=data_dir, keys=keys,
        processing_seconds=args.processing_seconds, rate_limits=not args.no_rate_limits,
        rate_window_scale=args.rate_window_scale, discard=args.discard, sha256=not args.no_sha256,
        max_file_size=args.max_file_size, max_session_size=args.max_session_size,
        allowed_extensions=exts, session_lifetime=args.session_lifetime, faults=faults,
        seed=args.seed, quota_exceeded=args.quota_exceeded,
        tariff_forbids_upload=args.tariff_forbids_upload, project_tariff=args.project_tariff,
        project_name_collision=args.project_name_collision,
        tls_cert=args.tls_cert, tls_key=args.tls_key, quiet=args.quiet, log=args.log,
        idle_timeout=args.idle_timeout,
    )
    try:
        srv, emu = make_server(cfg)
    except (OSError, ProfileUnavailable) as e:
        print(f"emulator: cannot start: {e}", file=sys.stderr)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return 1

    stopping = []

    def _on_signal(signum, frame):
        if not stopping:  # raise once; a second signal during shutdown is ignored
            stopping.append(signum)
            raise _Stop()

    in_main = threading.current_thread() is threading.main_thread()
    old = {}
    try:
        if in_main:
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, _on_signal)
            # A stop that hangs can be asked where every thread is (the harness does, before a kill).
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        host, port = srv.server_address[:2]
        scheme = "https" if args.tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        print(f"{scheme}://{shown}:{port}/api/v1", flush=True)
        if not args.quiet:
            print(f"emulator: data dir {data_dir}{' (discard mode)' if args.discard else ''}"
                  f", profile {args.profile}",
                  file=sys.stderr, flush=True)
        srv.serve_forever(poll_interval=0.2)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        stopping.append(0)
        try:
            srv.server_close()
        except Exception:
            pass
        emu.store.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if in_main:
            for s, h in old.items():
                try:
                    signal.signal(s, h)
                except Exception:
                    pass
    return 0
