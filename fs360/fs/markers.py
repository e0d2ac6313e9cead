"""`.create`, the marker that requests a session's project: written into memory, its JSON
checked and accepted (or refused) at close, listed while it is written or the project exists.
One renamed into place by a program (rsync) is checked at the rename and taken at that
program's exit: pending meanwhile, and listed."""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field

from ..engine.records import P_CREATED, P_READY, P_WAITING, SessionRecord
from ..errors import AccessDenied, FileTooBig, Fs360Error, InvalidArgument, NotFound
from .exits import Closer, Writers
from .handles import HandleTable
from .json_prefix import json_object_prefix_error
from .names import CREATE_MARKER

# The longest a .create waits for its tree's files written by other processes to reach their
# commit point (their exit comes within milliseconds; a program that runs on is committed by the
# write-back delay): past it they are "still being written" and the .create is refused.
TREE_COMMIT_WAIT_MAX = 5.0
POSTED_REFUSAL = ("the project was requested from the server already and may exist: .create cannot change "
                  "or request it again; status shows when it is made")
REWRITE_REFUSAL = ("the project is requested with the .create it was made from: only the same bytes can be "
                   "written to .create again (a re-run of the same copy)")

# .create holds a JSON object of project fields: anything bigger is not one.
MAX_CREATE_BYTES = 64 * 1024
# The journal's note of the .create files awaiting their renamer's exit ({session id: program}):
# a mount that stops meanwhile never learns that exit, so the next one says the marker was not taken.
PENDING_KEY = "pending_markers"

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PendingMarker:
    """A .create a program renamed into place (rsync), checked: taken at that program's exit."""
    data: bytes
    program: str
    mtime_ns: int  # the scratch file's (rsync sets it before the rename), or a utimens since


@dataclass(eq=False)
class MarkerHandle:
    """An open `.create`: written into memory, acted on at close (flush)."""
    session: SessionRecord
    writable: bool
    data: bytearray = field(default_factory=bytearray)
    dirty: bool = False
    # A write failed: the marker is not whole, so close() must not accept it (and why, when known).
    broken: bool = False
    refusal: str = ""
    # The process that closed it written and its ancestors (Writers.family): the tree files only
    # they wrote are done when it requests the project.
    requester: frozenset = frozenset()
    # The renamed .create this handle takes at its renamer's exit (None: one written).
    pending: PendingMarker | None = None
    # Opened for writing once the project is requested: the bytes .create was accepted with,
    # which only an identical re-copy may write (None: a new .create).
    accepted: bytes | None = None
    # Written through since it was opened (a shell closes its first descriptor before writing).
    wrote: bool = False
    # A renamed one's mtime: its scratch file's (None: the time it is accepted).
    mtime_ns: int | None = None

    @property
    def content(self) -> bytes:
        return bytes(self.data)


def marker_text(session: SessionRecord) -> bytes:
    """What `.create` reads: the bytes it was accepted with; for a project an older fs360
    requested (which kept only the fields), its fields rendered."""
    project = session.project
    if project is None:
        return b""
    if project.marker is not None:
        return project.marker
    return (json.dumps(project.options) + "\n").encode() if project.options else b""


class _NotFinite(Exception):
    """A number JSON cannot carry to the server (NaN, Infinity, 1e999)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _no_constant(name: str):
    raise _NotFinite(name)


def project_options(data: bytes) -> dict:
    """The project fields a written `.create` holds; InvalidArgument when it holds none."""
    text = data.strip(b"\0 \t\r\n")
    if text:
        try:
            options = json.loads(text.decode("utf-8"), parse_float=_finite_float, parse_constant=_no_constant)
        except _NotFinite as exc:
            raise InvalidArgument(f"{exc} is not a number the server takes: write finite numbers") from None
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"invalid JSON at line {exc.lineno} column {exc.colno}") from None
        except UnicodeDecodeError:
            raise InvalidArgument(".create is not UTF-8 text") from None
        except (ValueError, RecursionError):
            raise InvalidArgument("invalid JSON: nested too deep") from None
        if not isinstance(options, dict):
            raise InvalidArgument(".create must be empty or a JSON object")
    else:
        options = {}
    options.pop("upload_id", None)  # the mount names the session itself
    # What the server would refuse with a bare code after the files went up: refused here, in words.
    # (true == 1 and 1.0 == 1 in Python: the JSON types are checked too.)
    if "privacy_mode" in options and not (type(options["privacy_mode"]) is int and options["privacy_mode"] in (0, 1, 2)):
        raise InvalidArgument("privacy_mode must be 0, 1 or 2 (2 private, 1 anyone with the link, 0 public)")
    if "title" in options and not (isinstance(options["title"], str) and options["title"].strip()):
        raise InvalidArgument('title must be text, e.g. {"title": "Office, 3rd floor"}')
    link = options.get("download_link")
    if "download_link" in options and not (isinstance(link, str) and link.lower().startswith(("http://", "https://"))):
        raise InvalidArgument("download_link must be an http:// or https:// address the server can download from")
    return options


def cancelled_reason(remover: str | None, renamer: str = "") -> str:
    """Why a session has no project request any more, once its .create was removed before the
    request was sent (as SEMANTICS says: unlink .create cancels): what happened and what to do.
    `renamer`: the program whose renamed .create still awaited its exit (it was never taken)."""
    by = f" by {remover}" if remover else ""
    what = (f"the .create {renamer} put here was removed{by} before {renamer} exited, so it was not taken"
            if renamer else f"the project request was cancelled because .create was removed{by} before the "
                            f"request was sent")
    hint = (" (rsync --delete removes it when the source has no .create: add --exclude .create, or "
            "--filter 'P .create')" if remover == "rsync" else "")
    return f"{what}; write .create again to request the project{hint}"


def project_created(session: SessionRecord) -> bool:
    project = session.project
    return session.sealed or (project is not None and project.state in (P_CREATED, P_READY))


class Markers:
    """The sessions' `.create` files, over the engine's project requests."""

    def __init__(self, engine, handles: HandleTable, writers: Writers):
        self.engine = engine
        self.handles = handles
        self.writers = writers
        # Sessions with a .create being written but not yet accepted: it must be listed meanwhile.
        self._open_for_writing: dict[int, int] = {}
        # Session id -> its .create renamed into place, awaiting its renamer's exit (listed).
        self._pending: dict[int, PendingMarker] = {}
        # Session id -> the mtime set on its .create while open for writing (cp -a sets it on the
        # open file, before close): it is that writing's, kept once the writing is settled.
        self._times: dict[int, int] = {}
        with engine.lock:
            self._forget_pending_of_a_stopped_mount_locked()

    def _forget_pending_of_a_stopped_mount_locked(self) -> None:
        """A .create whose renamer's exit the last mount awaited when it stopped: that exit is
        unknown, so the marker is not taken (the folder may be incomplete), and status says so."""
        noted = self.engine.journal.get_meta(PENDING_KEY) or {}
        for session in self.engine.registry.sessions.values():
            program = noted.get(str(session.id))
            if program:
                self.engine.registry.marker_refused_locked(
                    session, f"the mount stopped while it waited for {program} to end after {program} put .create "
                             f"here, so .create was not taken: copy the folder again, or write .create yourself "
                             f"once it is whole")
        if noted:
            self.engine.journal.set_meta(PENDING_KEY, {})

    def listed(self, session: SessionRecord) -> bool:
        project = session.project
        return (project is not None and not project.marker_hidden) \
            or self._open_for_writing.get(session.id, 0) > 0 or session.id in self._pending

    def text(self, session: SessionRecord) -> bytes:
        """What `.create` reads: a pending one's content, else the accepted one's."""
        pending = self._pending.get(session.id)
        return pending.data if pending is not None else marker_text(session)

    def mtime_ns(self, session: SessionRecord) -> int:
        """A pending one's, else the accepted one's; the folder's for an older fs360's request."""
        pending = self._pending.get(session.id)
        if pending is not None:
            return pending.mtime_ns
        project = session.project
        if project is not None and project.marker_mtime_ns is not None:
            return project.marker_mtime_ns
        return session.mtime_ns

    def set_mtime_locked(self, session: SessionRecord, mtime_ns: int) -> None:
        """utimens on .create (cp -a, tar, rsync --inplace set the source's time after writing),
        also once it is read-only (POSIX lets the owner set times on a read-only file). While it is
        open for writing, the time waits for that writing to be settled: a re-copy refused for
        different bytes must not leave the source's time on the accepted one."""
        if not self.listed(session):
            raise NotFound(CREATE_MARKER)
        if self._open_for_writing.get(session.id, 0) > 0:
            self._times[session.id] = mtime_ns
        else:
            self._keep_mtime_locked(session, mtime_ns)

    def _keep_mtime_locked(self, session: SessionRecord, mtime_ns: int | None) -> None:
        pending = self._pending.get(session.id)
        if mtime_ns is None:
            return
        if pending is not None:
            pending.mtime_ns = mtime_ns
        elif session.project is not None and not session.project.marker_hidden:
            self.engine.registry.update_project_locked(session, marker_mtime_ns=mtime_ns)

    def mode(self, session: SessionRecord) -> int:
        return 0o444 if session.sealed or session.project_posted else 0o644

    @staticmethod
    def _check_writable(session: SessionRecord) -> None:
        if project_created(session):
            raise AccessDenied("the project is created: .create is read-only")
        if session.project_posted:
            raise AccessDenied(POSTED_REFUSAL)

    def _rewritable(self, session: SessionRecord) -> bool:
        """Listed once the project is requested: only an identical re-copy may write it."""
        project = session.project
        return (project_created(session) or session.project_posted) \
            and project is not None and not project.marker_hidden

    def open_locked(self, session: SessionRecord, writable: bool, truncate: bool) -> int:
        accepted = None
        if writable:
            if self._rewritable(session):
                accepted = self.text(session)
            else:
                self._check_writable(session)
        handle = MarkerHandle(session, writable, accepted=accepted)
        if not truncate:
            handle.data.extend(self.text(session))
        if writable:
            # Opened for writing while it is not listed, it is created (the kernel may still hold
            # the entry of a refused one, so `touch` opens it without O_CREAT's create): an empty
            # .create is a valid request too, as is a truncated one.
            handle.dirty = truncate or not self.listed(session)
            self._open_for_writing[session.id] = self._open_for_writing.get(session.id, 0) + 1
        return self.handles.add(handle)

    def write(self, handle: MarkerHandle, data: bytes, offset: int) -> int:
        if not handle.writable:
            raise AccessDenied(".create is read-only")
        end = offset + len(data)
        if handle.accepted is not None:
            return self._write_same(handle, data, offset)
        if end > MAX_CREATE_BYTES:
            handle.broken = True
            raise FileTooBig(f".create holds a JSON object of at most {MAX_CREATE_BYTES} bytes")
        if len(handle.data) < end:
            handle.data.extend(b"\0" * (end - len(handle.data)))
        handle.data[offset:end] = data
        handle.dirty = True
        self._check_prefix(handle)
        return len(data)

    def _write_same(self, handle: MarkerHandle, data: bytes, offset: int) -> int:
        """A write into a .create its project was requested with: the same bytes at the same place
        pass (cp -a, tar -x re-runs), the first different one fails (a shell ignores close's error)."""
        handle.wrote = True
        if handle.broken or bytes(data) != handle.accepted[offset:offset + len(data)]:
            self._refuse_rewrite(handle)
        if len(handle.data) < offset:
            handle.data.extend(b"\0" * (offset - len(handle.data)))
        handle.data[offset:offset + len(data)] = data
        handle.dirty = True
        return len(data)

    def _refuse_rewrite(self, handle: MarkerHandle) -> None:
        handle.broken = True
        with self.engine.lock:
            self._times.pop(handle.session.id, None)
            self.engine.registry.name_refused_locked(handle.session, CREATE_MARKER, REWRITE_REFUSAL)
        raise AccessDenied(REWRITE_REFUSAL)

    def _check_prefix(self, handle: MarkerHandle) -> None:
        """Refuses the write after which no ending could make .create a JSON object: a shell's
        `echo '{bad' > .create` then fails (bash ignores errors of close)."""
        try:
            # Stripped as project_options strips it when it is read (NUL padding, newlines).
            text = codecs.getincrementaldecoder("utf-8")().decode(bytes(handle.data).strip(b"\0 \t\r\n"), final=False)
        except UnicodeDecodeError:
            reason = ".create is not UTF-8 text"
        else:
            reason = json_object_prefix_error(text)
        if reason:
            handle.broken = True
            handle.refusal = f"invalid .create: {reason}; write a JSON object, e.g. {{\"title\": \"My project\"}}"
            with self.engine.lock:
                self.engine.registry.marker_refused_locked(handle.session, handle.refusal)
            raise InvalidArgument(handle.refusal)

    @staticmethod
    def truncate(handle: MarkerHandle, length: int) -> None:
        del handle.data[length:]
        handle.dirty = True

    @staticmethod
    def check_truncate_by_path(session: SessionRecord) -> None:
        """`> .create` truncates by path before opening: the open handle does the work."""
        if session.sealed:
            raise AccessDenied(".create is read-only once the project exists")

    def flush(self, handle: MarkerHandle, writer_dying: str = "", requester: frozenset = frozenset()) -> None:
        """close(): a written .create is accepted here, so an invalid one fails the close
        (and its reason shows in status until a valid one is written). `writer_dying`: why the
        closing process is ending abnormally; what it wrote is not taken as a request.
        `requester`: that process and its ancestors (Writers.family)."""
        if handle.accepted is not None:
            self._flush_same(handle)
            return
        if handle.dirty and handle.pending is None:
            # Written here and closed: it replaces a renamed one still awaiting its renamer.
            with self.engine.lock:
                self._drop_pending_locked(handle.session)
        if handle.dirty and not writer_dying:
            handle.requester = requester
            # The tree's files written by other processes reach their commit point first.
            wait = min(self.engine.settings.writeback_delay + 0.5, TREE_COMMIT_WAIT_MAX)
            self.engine.await_tree_commits(handle.session, requester, wait)
        try:
            if writer_dying and handle.dirty:
                handle.broken = True
                raise InvalidArgument(f".create was not written whole ({writer_dying}): not accepted")
            if handle.broken:
                raise InvalidArgument(handle.refusal or ".create was not written whole: not accepted")
            if handle.dirty and not handle.data:
                # Nothing written yet: a shell's `> .create` dup()s the descriptor and closes the
                # first one before the command writes, so an empty marker is only checked here and
                # requests the project at the last close (release), never with defaults too early.
                with self.engine.lock:
                    if not project_created(handle.session):
                        self.engine.check_project_request_locked(handle.session, handle.requester)
                return
            if handle.dirty:
                self._accept(handle)
        except InvalidArgument as exc:
            with self.engine.lock:
                self.engine.registry.marker_refused_locked(handle.session, str(exc))
            raise

    def _flush_same(self, handle: MarkerHandle, last: bool = False) -> None:
        """The close of a .create written once its project was requested: the bytes it was accepted
        with change nothing (a time set meanwhile is kept); any others are refused. A close before
        anything was written, but the last (`last`), decides nothing: a shell's `echo '{}' >
        .create` closes its first descriptor before echo writes through the second."""
        written = bytes(handle.data)
        undecided = not last and not handle.wrote
        if handle.broken or (written != handle.accepted and not undecided):
            self._refuse_rewrite(handle)
        if written != handle.accepted:
            return
        handle.dirty = False
        with self.engine.lock:
            self._keep_mtime_locked(handle.session, self._times.pop(handle.session.id, None))

    def take_renamed(self, session: SessionRecord, data: bytes, mtime_ns: int, renamer: Closer | None = None) -> None:
        """A scratch file renamed onto .create (rsync writes `.create.XXXXXX`, then renames it):
        .create written with `data` by the renamer, `mtime_ns` the scratch file's (what .create then reads back).
        Its content is checked now (a refusal fails the rename); it is taken as a written one at
        its close is, but at the exit of the renaming program (rsync sends .create before the
        tree's files, and freezing the tree now would refuse them): pending until then. A
        renamer whose exit cannot be told (None, or no watch): taken now, as written by nobody: the
        rename says nothing of the renamer's own files being done (rsync renames .create first), so
        they reach their commit point as any file does, or the rename is refused meanwhile."""
        self._check_writable(session)
        handle = MarkerHandle(session, writable=True, mtime_ns=mtime_ns)
        try:
            self.write(handle, data, 0)
            project_options(data)
        except (FileTooBig, InvalidArgument) as exc:
            with self.engine.lock:
                self.engine.registry.marker_refused_locked(session, str(exc))
            raise
        if renamer is not None:
            pending = PendingMarker(bytes(data), renamer.name, mtime_ns)
            with self.engine.lock:
                # Both under the state lock: the exit's action waits for it, so it finds this pending.
                if self.writers.at_exit(renamer, lambda failure: self._settle(session, pending, failure)):
                    self._hold_locked(session, pending)
                    return
        self._take(handle)

    def _hold_locked(self, session: SessionRecord, pending: PendingMarker) -> None:
        self._drop_pending_locked(session)
        self._pending[session.id] = pending
        self.engine.registry.marker_refused_locked(session, "")
        self._note_pending_locked()

    def pending_note_locked(self, session: SessionRecord) -> str:
        """What the session's pending .create waits for, for status ('' when none is pending)."""
        pending = self._pending.get(session.id)
        if pending is None:
            return ""
        return (f".create put here by {pending.program} is taken when {pending.program} exits successfully "
                f"(the folder may still change until then)")

    def _note_pending_locked(self) -> None:
        """The journal's note of the pending ones: what `_pending` holds, by session id."""
        self.engine.journal.set_meta(PENDING_KEY, {str(sid): p.program for sid, p in self._pending.items()})

    def _drop_pending_locked(self, session: SessionRecord, pending: PendingMarker | None = None) -> bool:
        """Forgets the session's pending .create (only `pending`, when given): whether one was."""
        current = self._pending.get(session.id)
        if current is None or (pending is not None and current is not pending):
            return False
        del self._pending[session.id]
        self._note_pending_locked()
        return True

    def _settle(self, session: SessionRecord, pending: PendingMarker, failure: str) -> None:
        """The renamer of a pending .create exited (Writers.at_exit): with 0 the marker is taken
        as a written one at its close; otherwise it is refused, the folder maybe incomplete."""
        with self.engine.lock:
            if self._pending.get(session.id) is not pending:
                return  # unlinked, or replaced by another .create meanwhile
            if failure:
                self._drop_pending_locked(session, pending)
                self.engine.registry.marker_refused_locked(
                    session, f"{pending.program} {failure} after it put .create here, so .create was not taken: "
                             f"the folder may be incomplete; copy it again, or write .create yourself once it "
                             f"is whole")
                return
        handle = MarkerHandle(session, writable=True, data=bytearray(pending.data), dirty=True, pending=pending,
                              mtime_ns=pending.mtime_ns)
        try:
            self._take(handle)
        except Fs360Error as exc:
            log.info("%s/.create from %s not taken: %s", session.name, pending.program, exc)
        finally:
            with self.engine.lock:
                self._drop_pending_locked(session, pending)

    def _take(self, handle: MarkerHandle) -> None:
        """A whole .create not written through an open file: flush()'s checks and wait for the
        tree's writers, and an empty one accepted at once (there is no later release)."""
        # Declaring nobody's files done: at the renamer's exit its own files were settled by that
        # exit, and one of a helper it left running waits for the helper's (rsync's receiver renames).
        self.flush(handle)
        if handle.dirty:
            # Empty: flush() only checked it (see there); a rename has no later release to wait for.
            try:
                self._accept(handle)
            except Fs360Error as exc:
                with self.engine.lock:
                    self.engine.registry.marker_refused_locked(handle.session, str(exc))
                raise

    def _accept(self, handle: MarkerHandle) -> None:
        options = project_options(bytes(handle.data))
        with self.engine.lock:
            session = handle.session
            if self.engine.registry.sessions.get(session.name) is not session:
                raise NotFound("the session was removed")
            if project_created(session):
                raise AccessDenied("the project is created already")
            if session.project_posted:
                raise AccessDenied(POSTED_REFUSAL)
            if handle.pending is not None and self._pending.get(session.id) is not handle.pending:
                # Unlinked or replaced while its renamer's exit waited for the tree's writers
                # (without the lock): that later word stands.
                handle.dirty = False
                return
            # Its mtime: one set while it was written, else the renamed scratch file's, else now.
            mtime_ns = self._times.pop(session.id, None) or handle.mtime_ns or time.time_ns()
            self.engine.request_project_locked(session, options, handle.requester, bytes(handle.data), mtime_ns)
            self.engine.registry.marker_refused_locked(session, "")
            self.engine.registry.marker_cancelled_locked(session, "")
            handle.dirty = False

    def release(self, handle: MarkerHandle) -> None:
        if not handle.writable:
            return
        if handle.accepted is not None and handle.dirty and not handle.broken:
            # Truncated by a shell and never written: refused now, in status (a release has no error).
            with contextlib.suppress(AccessDenied):
                self._flush_same(handle, last=True)
        if handle.dirty and not handle.data and not handle.broken and handle.accepted is None:
            try:
                self._accept(handle)  # `touch .create`, `> .create`: an empty request, at the last close
            except Fs360Error as exc:
                with self.engine.lock:
                    self.engine.registry.marker_refused_locked(handle.session, str(exc))
        with self.engine.lock:
            count = self._open_for_writing.get(handle.session.id, 1) - 1
            if count > 0:
                self._open_for_writing[handle.session.id] = count
            else:
                self._open_for_writing.pop(handle.session.id, None)
                # A time set after the close (tar sets it by name, and the release may come later).
                self._keep_mtime_locked(handle.session, self._times.pop(handle.session.id, None))

    def unlink_locked(self, session: SessionRecord, remover: str = "") -> None:
        """`remover`: the name of the program that removed it, when known (for status's words)."""
        if not self.listed(session):
            raise NotFound(CREATE_MARKER)
        pending = self._pending.get(session.id)
        if self._drop_pending_locked(session):  # never taken, then
            self.engine.registry.marker_cancelled_locked(session, cancelled_reason(remover or "", pending.program))
        project = session.project
        if project is None:
            return
        if project.state in (P_WAITING, "failed") and self.engine.cancel_project_locked(session):
            self.engine.registry.marker_cancelled_locked(session, cancelled_reason(remover))
            return
        # The project exists (or was requested from the server, and may) and stays; the marker
        # just leaves the listing so rm -r works.
        self.engine.registry.hide_marker_locked(session)
