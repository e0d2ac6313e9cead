"""The upload engine: journal, spool, workers, project creation and polling."""

from .engine import Engine
from .projects import project_page
from .records import FileRecord, ProjectRequest, SessionRecord

__all__ = ["Engine", "FileRecord", "ProjectRequest", "SessionRecord", "project_page"]
