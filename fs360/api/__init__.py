"""HTTP client of the 360-for-you upload API.

Threads (each under its name in /proc/PID/task/*/comm: fs360/thread_names.py)
  fs360-deadlines   the requests' overall deadlines (transport.py): ends a request whose time
                    is up; started with the first request, one per process; it sleeps until
                    the first deadline and is woken only by a request with a sooner one
"""

from .client import ApiClient, FileProgress, Project, RemoteFile, UploadSession
from .pacing import Pacer
from .retry import Backoff

__all__ = ["ApiClient", "Backoff", "FileProgress", "Pacer", "Project", "RemoteFile", "UploadSession"]
