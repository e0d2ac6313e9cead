"""Entry point of an upload worker process, run as a script:

    python -I -S .../fs360/engine/upload_worker.py FD PATH...

Four of these live next to the daemon, so what a worker imports is counted four
times over: only the transfer's modules load (fs360/engine/__init__.py imports
nothing until asked). `-I` keeps the environment and the current directory out of
its import path, `-S` skips site (its .pth hooks), and the daemon's own import path
comes as PATH arguments (the first is the root that holds this very fs360 package,
so both import the same code).
"""

import sys


def main(argv: list[str]) -> int:
    sys.path[:0] = argv[2:]
    from fs360.engine.transfer_pool import worker_main
    return worker_main(int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
