"""Entry point of an upload worker process, run as a script:

    python -I -S .../fs360/engine/upload_worker.py FD PATH...

Four of these live next to the daemon, so what a worker imports is counted four
times over. `-m fs360.engine.upload_worker` would first run fs360/engine/__init__.py,
which imports the whole engine (journal, sqlite3, records, projects, cachetools ...)
that a worker never uses. So the worker is started as a script: `-I` keeps the
environment and the current directory out of its import path, `-S` skips site
(its .pth hooks), the daemon's own import path comes as PATH arguments (the first
is the root that holds this very fs360 package, so both import the same code), and
`fs360.engine` is registered as a bare package, without running its __init__, before
transfer_pool is imported: only the transfer's modules load.
"""

import os
import sys
import types


def _bare_engine_package() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    import fs360  # its __init__ is a docstring and a version

    package = types.ModuleType("fs360.engine", "the upload engine (its __init__ not run: see upload_worker.py)")
    package.__path__ = [here]
    package.__package__ = "fs360.engine"
    sys.modules["fs360.engine"] = package
    fs360.engine = package


def main(argv: list[str]) -> int:
    sys.path[:0] = argv[2:]
    _bare_engine_package()
    from fs360.engine.transfer_pool import worker_main
    return worker_main(int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
