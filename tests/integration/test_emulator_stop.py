"""The emulator stops on SIGTERM whenever it comes, also while it accepts a connection."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

# The emulator with a slow hand-off of each new connection to its thread (what a loaded
# machine does to Thread.start): the main thread says when it is in there, then waits.
SLOW_ACCEPT = """
import sys, threading
from fs360.emulator import framing, main
handed_off = framing.Server.process_request
entered = threading.Event()
def slow_process_request(self, request, address):
    print("HANDING-OFF", flush=True)
    entered.wait(30)  # a signal arrives while the main thread waits here
    handed_off(self, request, address)
framing.Server.process_request = slow_process_request
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_a_connection_is_handed_off_stops_the_emulator(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_ACCEPT, "--port", "0", "--data-dir", str(tmp_path),
                             "--quiet", "--no-rate-limits"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            assert proc.stdout.readline().strip() == "HANDING-OFF"
            proc.send_signal(signal.SIGTERM)
            # Swallowed, the signal left the emulator serving until the wait above ran out.
            assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
