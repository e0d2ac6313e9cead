"""A TCP forwarder that delays every byte by a fixed time in each direction (netem's delay, in user space).

    python -m bench.delay_link TARGET_PORT ONE_WAY_SECONDS   # prints the port it listens on

This kernel has no netem. The emulator's `latency` fault sleeps before a request's
body is read, so the body crosses the link during the sleep and a PUT of a chunk
that takes longer than the round trip to send pays no round trip at all. This
forwarder gives a request what a real link gives it: its bytes arrive one-way
later, and so do the answer's, so a sequential client pays the full round trip
per request on top of the transfer. It runs as its own process (its copying must
not share the benchmark's GIL). The rate is shaped by tc on the client side of
it (bench/wan_bench.py); its side towards the emulator is not shaped.
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time

READ_SIZE = 256 * 1024


def pump(source: socket.socket, target: socket.socket, one_way: float) -> None:
    """Copies source to target, each block sent `one_way` seconds after it was read."""
    pending: collections.deque = collections.deque()
    ready = threading.Condition()
    done = [False]

    def read() -> None:
        try:
            while True:
                block = source.recv(READ_SIZE)
                if not block:
                    break
                with ready:
                    pending.append((time.monotonic() + one_way, block))
                    ready.notify()
        except OSError:
            pass
        with ready:
            done[0] = True
            ready.notify()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            with ready:
                while not pending and not done[0]:
                    ready.wait()
                if not pending:
                    break
                due, block = pending.popleft()
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            target.sendall(block)
        target.shutdown(socket.SHUT_WR)  # pass the half-close on, as the link would
    except OSError:
        # One side is gone: close both, so that the other side sees it too.
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    reader.join()


def serve_connection(client: socket.socket, target_port: int, one_way: float) -> None:
    try:
        server = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream = threading.Thread(target=pump, args=(client, server, one_way), daemon=True)
    upstream.start()
    pump(server, client, one_way)
    upstream.join()
    client.close()
    server.close()


def main(argv: list[str]) -> int:
    target_port, one_way = int(argv[0]), float(argv[1])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(client, target_port, one_way), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
