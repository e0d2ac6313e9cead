"""Entry point of an upload worker process: `python -m fs360.engine.upload_worker FD`.

Its own module, so that running it does not re-execute transfer_pool.py, which the
package has imported already."""

import sys

from .transfer_pool import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
