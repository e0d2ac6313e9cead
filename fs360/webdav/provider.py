"""The WebDAV provider: WsgiDAV's resources over the path model, as fs/fuse_ops.py is for FUSE.

Every decision (what a name may be, what may be renamed, deleted or rewritten, .create,
the status files) is MountModel's; each call into it is wrapped by `answered()`, which
turns its refusals into HTTP statuses (errors.py). What is WebDAV's own: a PUT's body
must come whole (writers.py), empty PUTs are held back, locks and dead properties are
WsgiDAV's in-memory managers, and the upload state shows as `fs360:` properties.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading

from wsgidav import util
from wsgidav.dav_error import HTTP_FORBIDDEN, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider

from ..engine.records import UNFINISHED_STATES
from ..errors import AccessDenied, NoAttribute, NotADirectory, NotFound
from .errors import answered
from .writers import BLOCK, CUT_SHORT, SERVER_STOPPING, BodyWriter, ContentReader, HeldEmptyFiles, expected_length

log = logging.getLogger(__name__)

# The upload state of each file, as live properties (Clark notation: {namespace}name).
NAMESPACE = "urn:fs360"
STATE_PROPERTIES = {f"{{{NAMESPACE}}}{name}": f"user.fs360.{attribute}" for name, attribute in (
    ("state", "state"), ("received", "received"), ("server-name", "server_name"), ("error", "error"))}
WIN32_MTIME = "{urn:schemas-microsoft-com:}Win32LastModifiedTime"
NEW_FILE_MODE = 0o644
NEW_FOLDER_MODE = 0o755


class Fs360Provider(DAVProvider):
    def __init__(self, model, empty_put_grace: float):
        super().__init__()
        self.model = model
        self.held = HeldEmptyFiles(model, empty_put_grace, self._locked)
        self._writing: set[str] = set()  # paths a PUT or COPY is writing
        self._writing_lock = threading.Lock()
        self.stopping = False  # set by the server's stop: a PUT cut then is answered 503, not 400

    def is_readonly(self) -> bool:
        return False

    def get_resource_inst(self, path: str, environ: dict):
        with answered():
            try:
                attrs = self.model.getattr(path)
            except (NotFound, NotADirectory):
                return None
        return self.resource(path, environ, attrs)

    def resource(self, path: str, environ: dict, attrs: dict):
        if stat.S_ISDIR(attrs["st_mode"]):
            return FolderResource(path, environ, attrs)
        return FileResource(path, environ, attrs)

    def open_writer(self, path: str) -> int:
        """The one writer of `path` for a PUT or COPY (the held empty file, or a new or truncated
        one); a second one at once is refused: two bodies written into one file would merge."""
        with self._writing_lock:
            if path in self._writing:
                raise DAVError(409, context_info="another PUT or COPY of this file is still running: "
                                                 "send it again once that one has ended")
            self._writing.add(path)
        try:
            fh = self.held.take(path)
            if fh is None:
                with answered():
                    fh = self.model.create(path, NEW_FILE_MODE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except BaseException:
            self.writer_closed(path)
            raise
        return fh

    def writer_closed(self, path: str) -> None:
        with self._writing_lock:
            self._writing.discard(path)

    def _locked(self, path: str) -> bool:
        return bool(self.lock_manager and self.lock_manager.is_url_locked(util.quote(path)))

    def close(self) -> None:
        self.held.close_all()


class _Fs360Resource:
    """What files and folders share: their attributes, and the model behind them."""

    attrs: dict
    path: str
    provider: Fs360Provider

    @property
    def model(self):
        return self.provider.model

    def get_creation_date(self):
        return self.attrs["st_ctime"] / 1e9

    def get_last_modified(self):
        return self.attrs["st_mtime"] / 1e9

    def get_display_name(self):
        return util.get_uri_name(self.path)

    def set_property_value(self, name, value, *, dry_run=False):
        """Dead properties are kept (in memory); Windows' Win32LastModifiedTime also sets the mtime."""
        if name == WIN32_MTIME and value is not None:
            self.set_last_modified(self.path, value.text, dry_run=dry_run)
        return super().set_property_value(name, value, dry_run=dry_run)

    def set_last_modified(self, dest_path, time_stamp, *, dry_run):
        """Win32LastModifiedTime (and X-OC-Mtime) set the mtime, as touch does."""
        seconds = time_stamp if isinstance(time_stamp, int) else util.parse_time_string(time_stamp)
        if seconds is None:
            raise DAVError(HTTP_FORBIDDEN, context_info=f"{time_stamp!r} is not an HTTP date")
        if not dry_run:
            with answered():
                self.model.utimens(dest_path, int(seconds) * 10**9)
        return True

    def _moved_or_copied(self, dest_path: str, is_move: bool, with_children: bool) -> None:
        """Dead properties follow the resource (RFC 4918 9.8.2, 9.9.1); locks stay behind."""
        manager = self.provider.prop_manager
        dest = util.quote(dest_path.rstrip("/") + ("/" if self.is_collection else ""))
        if manager and is_move:
            manager.move_properties(self.get_ref_url(), dest, with_children=with_children, environ=self.environ)
        elif manager:
            manager.copy_properties(self.get_ref_url(), dest, self.environ)
        if is_move:
            self.remove_all_locks(recursive=True)
            self.provider.held.moved(self.path, dest_path)

    def _removed(self) -> None:
        self.remove_all_properties(recursive=True)
        self.remove_all_locks(recursive=True)

    def support_recursive_move(self, dest_path):
        return True

    def move_recursive(self, dest_path):
        """MOVE to a free name: the mount's rename, of a file, a folder or a session."""
        with answered():
            self.model.rename(self.path, dest_path)
        self._moved_or_copied(dest_path, True, with_children=True)
        return []

    def _existing_file(self, dest_path: str) -> bool:
        dest = self.provider.get_resource_inst(dest_path, self.environ)
        return dest is not None and not dest.is_collection


class FileResource(_Fs360Resource, DAVNonCollection):
    def __init__(self, path: str, environ: dict, attrs: dict):
        DAVNonCollection.__init__(self, path, environ)
        self.attrs = attrs
        self._content: bytes | None = None  # a status file or .create, rendered once for a GET
        self._writer: BodyWriter | None = None
        self._moved = False

    # --- reading -------------------------------------------------------------------------------

    def get_content_length(self):
        if self.environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            self._render()
            if self._content is not None:
                return len(self._content)
        return self.attrs["st_size"]

    def _render(self) -> None:
        """For a GET: a status file or .create is rendered once here, so the length announced is
        its content's; a file's size is taken afresh."""
        if self._content is not None:
            return
        with answered():
            fh = self.model.open(self.path, os.O_RDONLY)
            try:
                if not self.model.is_snapshot(fh):
                    self.attrs = self.model.getattr(None, fh)
                    return
                parts = []
                while part := self.model.read(fh, BLOCK, sum(map(len, parts))):
                    parts.append(part)
            finally:
                self.model.release(fh)
        self._content = b"".join(parts)

    def get_content(self):
        self._render()
        if self._content is not None:
            return io.BytesIO(self._content)
        with answered():
            return ContentReader(self.model, self.model.open(self.path, os.O_RDONLY))

    def get_content_type(self):
        return util.guess_mime_type(self.path)

    def get_etag(self):
        return f"{self.attrs['st_mtime']:x}-{self.attrs['st_size']:x}"

    def support_etag(self):
        return True

    def support_ranges(self):
        return True

    # --- writing: one PUT, one writer --------------------------------------------------------------

    def begin_write(self, *, content_type=None):
        self._writer = BodyWriter(self.model, self.provider.open_writer(self.path), self.path,
                                  lambda: self.provider.stopping)
        return self._writer

    def end_write(self, *, with_errors):
        """The commit point: the file is final only when the request ended with its whole body.
        `with_errors`: reading the body or writing it failed (WsgiDAV answers with that error)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            self._end_write(writer, with_errors)
        finally:
            self.provider.writer_closed(self.path)

    def _end_write(self, writer: BodyWriter, with_errors: bool) -> None:
        if with_errors:
            try:
                self.model.finish_writer(writer.fh, False, CUT_SHORT)
            except Exception:  # the request's own error is the answer
                log.debug("closing the failed PUT of %s", self.path, exc_info=True)
            return
        expected = expected_length(self.environ)
        if expected is not None and writer.written != expected:
            with answered():
                self.model.finish_writer(writer.fh, False, CUT_SHORT)
            if self.provider.stopping:  # not the client's fault: "try again later"
                raise DAVError(503, context_info=SERVER_STOPPING)
            raise DAVError(400, context_info=f"the request's body ended after {writer.written} of its "
                                             f"{expected} bytes: the file is not taken; send it again")
        if writer.written == 0:
            self.provider.held.hold(self.path, writer.fh)  # its content may come with the next PUT
            return
        with answered():
            self.model.finish_writer(writer.fh, True)

    # --- properties: the upload state, then WsgiDAV's own --------------------------------------------

    def get_property_names(self, *, is_allprop):
        return super().get_property_names(is_allprop=is_allprop) + list(STATE_PROPERTIES)

    def get_property_value(self, name):
        attribute = STATE_PROPERTIES.get(name)
        if attribute is None:
            return super().get_property_value(name)
        with answered():
            try:
                return self.model.getxattr(self.path, attribute).decode("utf-8", "replace")
            except NoAttribute:
                return ""  # never uploaded: no server name; no error

    def set_property_value(self, name, value, *, dry_run=False):
        if name in STATE_PROPERTIES:
            raise DAVError(HTTP_FORBIDDEN, context_info="fs360's properties are read-only")
        return super().set_property_value(name, value, dry_run=dry_run)

    # --- deleting, moving, copying: the mount's unlink and rename --------------------------------------

    def delete(self):
        if self._moved:
            return
        with answered():
            self.model.unlink(self.path)
        self.provider.held.drop(self.path)
        self._removed()

    def handle_move(self, dest_path):
        """Onto an existing file, one rename: the model decides whether the target may be replaced
        before anything changes (WsgiDAV would delete the target first)."""
        if not self._existing_file(dest_path):
            return False
        self.move_recursive(dest_path)
        return True

    def handle_copy(self, dest_path, *, depth_infinity):
        """Onto an existing file, a rewrite of it (refused when the server holds another content)."""
        if not self._existing_file(dest_path):
            return False
        self.copy_move_single(dest_path, is_move=False)
        return True

    def copy_move_single(self, dest_path, *, is_move):
        if is_move:  # WsgiDAV deletes the source next: it is gone already
            self.move_recursive(dest_path)
            self._moved = True
            return
        copy_file(self.provider, self.path, dest_path)
        self._moved_or_copied(dest_path, False, with_children=False)


def copy_file(provider: Fs360Provider, source: str, dest: str) -> None:
    """COPY of one file: `cp source dest` through the model, one writer that succeeds only whole."""
    model = provider.model
    with answered():
        try:
            state = model.getxattr(source, "user.fs360.state").decode()
        except NoAttribute:
            state = ""  # a status file: it has no upload state
        if state in UNFINISHED_STATES:
            # Its data is not known whole: a copy would go up complete with whatever half it holds.
            reason = model.getxattr(source, "user.fs360.error").decode()
            raise AccessDenied(f"not copied: {source.rsplit('/', 1)[-1]} is {state}: {reason}")
        reader = model.open(source, os.O_RDONLY)
        try:
            writer = BodyWriter(model, provider.open_writer(dest), dest, lambda: provider.stopping)
            try:
                while data := model.read(reader, BLOCK, writer.written):
                    writer.write(data)
            except BaseException:
                model.finish_writer(writer.fh, False, "its COPY failed; copy it again")
                raise
            finally:
                provider.writer_closed(dest)
            model.finish_writer(writer.fh, True)
        finally:
            model.release(reader)


class FolderResource(_Fs360Resource, DAVCollection):
    def __init__(self, path: str, environ: dict, attrs: dict):
        DAVCollection.__init__(self, path, environ)
        self.attrs = attrs

    def get_member_names(self):
        with answered():
            return [name for name, _ in self.model.readdir(self.path)]

    def get_member_list(self):
        with answered():
            entries = self.model.readdir(self.path)
        return [self.provider.resource(util.join_uri(self.path, name), self.environ, attrs)
                for name, attrs in entries]

    def create_empty_resource(self, name):
        """A new file, empty (PUT, or LOCK of an unmapped URL): held open until its content comes."""
        path = util.join_uri(self.path, name)
        with answered():
            fh = self.model.create(path, NEW_FILE_MODE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            self.provider.held.hold(path, fh)
            return FileResource(path, self.environ, self.model.getattr(path))

    def create_collection(self, name):
        with answered():
            self.model.mkdir(util.join_uri(self.path, name), NEW_FOLDER_MODE)

    def support_recursive_delete(self):
        return True

    def delete(self):
        """DELETE, and what a MOVE or COPY replaces: `rm -r` through the model, members first.
        A member refused is reported (207) and keeps its folder."""
        errors = []
        for member in self.get_member_list():
            try:
                errors += member.delete() or []
            except DAVError as exc:
                errors.append((member.get_href(), exc))
        if errors:
            return errors
        with answered():
            self.model.rmdir(self.path)
        self._removed()
        return []

    def copy_move_single(self, dest_path, *, is_move):
        """A folder copied member by member (WsgiDAV copies the members): the folder first."""
        with answered():
            if self.provider.get_resource_inst(dest_path, self.environ) is None:
                self.model.mkdir(dest_path, NEW_FOLDER_MODE)
        self._moved_or_copied(dest_path, is_move, with_children=False)
