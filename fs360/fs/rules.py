"""Whether a file may change: sealed sessions, a tree planned as one archive, bytes the
server holds, and the server's caps and extensions. Each check raises the refusal."""

from __future__ import annotations

from ..engine.archive_plan import ARCHIVE_EXTENSIONS
from ..engine.records import COMPLETE, IN_TREE, FileRecord, SessionRecord, in_scratch_folder
from ..errors import AccessDenied, FileTooBig, NotPermitted, QuotaWouldPass, refusal_in_plain_words
from .names import extension_of
from .tree import is_listed_locked


SEALED = "the project is created: the session is sealed"
POSTED = ("the project is being made from this folder (requested from the server): nothing can join "
          "or change it now; put new files in a new folder")


def sealed_reason(session: SessionRecord) -> str:
    """Why nothing in the session may change ('' when it may): its project exists, or may."""
    return SEALED if session.sealed else POSTED if session.project_posted else ""


def check_not_sealed(session: SessionRecord) -> None:
    reason = sealed_reason(session)
    if reason:
        raise AccessDenied(reason)


def check_tree_open_locked(session: SessionRecord, folder: str) -> None:
    """Refuses a change in `folder` (a path inside the session, "" for its top level) when it
    is part of the tree and .create was accepted: the tree is planned as one archive then."""
    reason = _tree_frozen_reason(session, folder)
    if reason:
        raise AccessDenied(reason)


def check_tree_removal_locked(session: SessionRecord, folder: str) -> None:
    """unlink of a tree file, rmdir of an emptied tree folder in `folder`: refused while the tree is
    frozen and its archive not wholly on the server. Once it is, nothing more is read of the tree:
    a file goes as any file the server holds (remembered), an empty folder holds nothing to lose."""
    if session.archive_complete:
        return
    reason = _tree_frozen_reason(session, folder)
    if reason:
        if session.archive is not None:
            reason += (f"; once {session.archive.server_name} is up, its files can be deleted and the "
                       f"folder removed")
        raise AccessDenied(reason)


def _tree_frozen_reason(session: SessionRecord, folder: str) -> str:
    if not folder or in_scratch_folder(folder) or not session.tree_frozen:
        return ""
    if session.archive is not None:
        return (f"the tree goes up as {session.archive.server_name}, planned when .create was "
                f"accepted: it cannot change now")
    return "the project is requested: the tree can change only before .create"


def frozen_reason_locked(engine, record: FileRecord) -> str:
    """Why `record` can no longer change ('' when it can): its attributes show it read-only then."""
    if record.local_only or not is_listed_locked(engine, record):
        return ""  # scratch, or deleted while open: it goes nowhere
    session = engine.registry.session_of(record)
    reason = sealed_reason(session)
    if reason:
        return reason
    if record.in_tree:
        reason = _tree_frozen_reason(session, record.name.rpartition("/")[0])
        if reason:
            return reason
    if record.may_be_on_server:
        return f"the server holds bytes of {record.name!r}: it cannot be changed"
    return ""


def refused_recopy_reason_locked(engine, record: FileRecord) -> str:
    """A re-copy that differs from what is held (content_check.py): the reason, kept for status.
    A frozen tree's file says why its tree cannot change, and is listed as refused in status."""
    if not record.in_tree:
        return engine.registry.refuse_change_locked(record)
    reason = f"not changed: {frozen_reason_locked(engine, record)}"
    engine.registry.name_refused_locked(engine.registry.session_of(record), record.name, reason)
    return engine.registry.refuse_change_locked(record, reason)


def check_mutable_locked(engine, record: FileRecord) -> None:
    reason = frozen_reason_locked(engine, record)
    if reason:
        raise AccessDenied(reason)


def check_uploadable_name_locked(engine, session: SessionRecord, name: str) -> None:
    deleted = next((f for f in session.unlinked if f.name == name), None)
    if deleted is not None and deleted.state not in (COMPLETE, IN_TREE):
        raise AccessDenied(
            f"the server holds part of {name!r} (deleted here while it was being uploaded) and can neither finish, "
            f"replace nor drop it: the name cannot be used again in this folder; remove the folder to discard the "
            f"session and copy the files into a new one")
    if deleted is not None:
        raise AccessDenied(f"the server holds a deleted file named {name!r}: the name cannot be used again")
    if "/" in name:
        return  # a file of the tree goes up inside its archive, never under a name of its own
    ext = extension_of(name)
    if session.archive is not None and ext in ARCHIVE_EXTENSIONS:
        raise NotPermitted(f"this folder's tree goes up as {session.archive.server_name}; "
                           f"the server takes one archive per session")
    caps = engine.registry.caps
    if ext in caps.refused_extensions or (caps.allowed_extensions and ext not in caps.allowed_extensions):
        raise NotPermitted(refusal_in_plain_words("extension_not_allowed",
                                                  {"extension": ext, "allowed": list(caps.allowed_extensions)}))


def check_growth(engine, record: FileRecord, new_size: int) -> None:
    """Takes engine.lock itself (only for the session cap)."""
    if record.local_only:
        return
    if engine.registry.caps.session_cap:
        with engine.lock:
            check_growth_locked(engine, record, new_size)
    else:
        check_growth_locked(engine, record, new_size)


def check_growth_locked(engine, record: FileRecord, new_size: int) -> None:
    """Whether `record` may grow to `new_size` under the server's caps; needs engine.lock held
    when there is a session cap. The session's sum is kept as sizes change (never summed here)."""
    if record.local_only:
        return
    caps = engine.registry.caps
    if caps.file_cap and new_size > caps.file_cap:
        raise FileTooBig(f"the server takes files up to {caps.file_cap} bytes")
    if caps.session_cap:
        if engine.registry.others_size_locked(record) + new_size > caps.session_cap:
            raise QuotaWouldPass(f"the session would pass the server's cap of {caps.session_cap} bytes")
