"""HTTP client of the 360-for-you upload API."""

from .client import ApiClient, FileProgress, Project, RemoteFile, UploadSession
from .pacing import Pacer
from .retry import Backoff

__all__ = ["ApiClient", "Backoff", "FileProgress", "Pacer", "Project", "RemoteFile", "UploadSession"]
