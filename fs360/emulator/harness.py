"""Start/stop an emulator subprocess for tests and benchmarks.

    with EmulatorProcess(args=["--processing-seconds", "0"]) as emu:
        requests.post(emu.base_url + "/uploads",
                      headers={"Authorization": f"Bearer {emu.api_key}"})
        emu.files(); emu.stats(); emu.violations()
        emu.set_faults([{"endpoint": "put_file", "kind": "error_503", "count": 1}])
        emu.set_account(403, "tariff_does_not_allow_api"); emu.clear_account()
        emu.restart()          # same data dir, same port

    EmulatorProcess(args=["--profile", "vendor"])  # api.md Part C (doc/EMULATOR.md)
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


class EmulatorError(RuntimeError):
    pass


class EmulatorProcess:
    def __init__(self, data_dir=None, *, args=(), key="sk_local_demo", env=None):
        self._own_dir = data_dir is None
        self.data_dir = str(data_dir) if data_dir is not None else tempfile.mkdtemp(prefix="fs360-emu-")
        self.args = list(args)
        # The profile the emulator runs ("default" or "vendor"), as its arguments say.
        self.profile = "default"
        for i, a in enumerate(self.args):
            if a == "--profile" and i + 1 < len(self.args):
                self.profile = self.args[i + 1]
            elif a.startswith("--profile="):
                self.profile = a.split("=", 1)[1]
        self.api_key = key
        self.env = env
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.base_url: str | None = None
        self.root_url: str | None = None
        self.returncode: int | None = None
        # Kept with the data (so it goes with it) and appended across restarts, so a crash
        # of an earlier run stays visible to `stderr_text`.
        self._stderr_path = os.path.join(self.data_dir, "emulator-stderr.log")

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "EmulatorProcess":
        if self.proc is not None and self.proc.poll() is None:
            raise EmulatorError("emulator already running")
        cmd = [sys.executable, "-m", "fs360.emulator", "--port", str(self.port), "--data-dir", self.data_dir,
               "--quiet", *self.args]
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        os.makedirs(self.data_dir, exist_ok=True)
        deadline = time.monotonic() + 15
        with open(self._stderr_path, "ab") as stderr:
            for attempt in range(50):  # the port may still be held briefly after a kill
                self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                             env=env)
                line = self._first_line(deadline)
                if line:
                    break
                self.proc.wait(timeout=5)
                if time.monotonic() >= deadline or self.port == 0:
                    break
                time.sleep(0.2)
        if not line:
            raise EmulatorError(f"emulator failed to start: {self._stderr()}")
        self.base_url = line.strip()
        self.root_url = self.base_url[: -len("/api/v1")]
        self.port = int(self.root_url.rsplit(":", 1)[1])
        return self

    def _first_line(self, deadline) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        try:
            while time.monotonic() < deadline:
                if sel.select(timeout=max(0.01, deadline - time.monotonic())):
                    ch = os.read(self.proc.stdout.fileno(), 4096)
                    if not ch:
                        return ""
                    buf += ch
                    if b"\n" in buf:
                        return buf.split(b"\n", 1)[0].decode()
            self.proc.kill()
            self.proc.wait()
            raise EmulatorError(f"emulator did not start within 15 s: {self._stderr()}")
        finally:
            sel.close()

    def _stderr(self) -> str:
        try:
            with open(self._stderr_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def stderr_text(self) -> str:
        return self._stderr()

    def stop(self, sig=signal.SIGTERM, timeout=10) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Where it hangs goes to its stderr log (faulthandler), then it is killed.
                p.send_signal(signal.SIGUSR1)
                time.sleep(0.5)
                p.kill()
                p.wait()
        if p.stdout:
            p.stdout.close()
        self.returncode = p.returncode
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- introspection ------------------------------------------------------------
    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.root_url + "/_emulator" + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise EmulatorError(f"{method} /_emulator{path}: {e.code} {e.read()[:500]!r}") from None

    def progress(self, upload_id: str) -> dict:
        """{"files", "complete", "received"} of one session: counts only, cheap to poll."""
        return self._call("GET", f"/progress/{upload_id}")

    def arrivals(self) -> list[tuple[float, int]]:
        """(epoch seconds, bytes) of each segment of a PUT body as it arrived, oldest first."""
        return [(at, nbytes) for at, nbytes in self._call("GET", "/arrivals")]

    def files(self) -> list[dict]:
        return self._call("GET", "/files")

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def violations(self) -> list[dict]:
        return self._call("GET", "/violations")

    def projects(self) -> list[dict]:
        return self._call("GET", "/projects")

    def set_faults(self, rules: list[dict], seed: int = 1) -> None:
        self._call("POST", "/faults", {"seed": seed, "rules": rules})

    def faults(self) -> dict:
        return self._call("GET", "/faults")

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def expire(self, upload_id: str) -> None:
        self._call("POST", f"/expire/{upload_id}")

    def set_flags(self, **flags) -> None:
        self._call("POST", "/flags", flags)

    def reset(self, data: bool = False) -> None:
        self._call("POST", "/reset", {"data": data})

    def health(self) -> dict:
        """{"ok", "discard", "profile"}."""
        return self._call("GET", "/health")

    def sessions(self) -> list[dict]:
        """Every stored session: {"upload_id", "created", "expires_at", "expires_in"} (epoch seconds)."""
        return self._call("GET", "/sessions")

    def set_account(self, status: int, error: str, endpoints: list[str] | None = None) -> None:
        """From now on every request to `endpoints` (None: all) that passes auth gets
        `status` {"error": error}: an account problem (401/402/403) switched on at run time."""
        self._call("POST", "/account", {"status": status, "error": error, "endpoints": endpoints})

    def clear_account(self) -> None:
        self._call("DELETE", "/account")

    def account(self) -> dict | None:
        return self._call("GET", "/account")["account"]

    def endpoint_counts(self) -> dict[str, int]:
        """Requests per "METHOD endpoint" (e.g. "DELETE delete_session"), whatever their answer."""
        return self.stats()["endpoints"]
