"""Thread names the kernel shows (`/proc/PID/task/TID/comm`, `top -H`, `ps -L`, gdb), so that a
look at a running daemon tells its threads apart.

Python gives the kernel its threads' names itself only from 3.14 on. Before that, the daemon
calls `name_threads_for_the_kernel()` once, before it starts any thread, and every thread
started afterwards sets its kernel name to its Python name, cut to the kernel's 15 bytes, as
3.14 does. Threads libfuse starts keep the name of the process (the main thread's).
"""

from __future__ import annotations

import ctypes
import sys
import threading

PR_SET_NAME = 15
KERNEL_NAME_BYTES = 15


def kernel_name(name: str) -> str:
    """What the kernel keeps of a thread name."""
    return name.encode()[:KERNEL_NAME_BYTES].decode(errors="ignore")


def name_threads_for_the_kernel() -> None:
    """Every thread started from now on gives the kernel its name (a no-op from Python 3.14)."""
    start = threading.Thread._bootstrap_inner  # where each new thread begins, before run()
    if sys.version_info >= (3, 14) or getattr(start, "names_the_kernel_thread", False):
        return
    libc = ctypes.CDLL(None, use_errno=True)

    def named_start(thread: threading.Thread) -> None:
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(kernel_name(thread.name).encode()), 0, 0, 0)
        start(thread)

    named_start.names_the_kernel_thread = True
    threading.Thread._bootstrap_inner = named_start
