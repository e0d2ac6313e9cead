"""The registry alone: records, their state machine and the journal behind them.

No engine, no network, no threads: a real journal and spool in a temporary
directory, and a list that stands in for the scheduler.
"""

import os
from pathlib import Path

import pytest
import xxhash

from fs360.api.client import RemoteFile
from fs360.config import Settings
from fs360.engine.journal import Journal
from fs360.engine.locking import StateLock
from fs360.engine.records import (CLOSED, COMPLETE, HELD, INTERRUPTED, LOCAL, P_CREATED, PENDING, UPLOADING,
                                  WRITING)
from fs360.engine.registry import STOPPED_WHILE_WRITING, Registry
from fs360.engine.spool import Spool

WRITEBACK = 7.0


class Opened:
    """A registry over the journal in `cache`, with the scheduler's calls recorded."""

    def __init__(self, cache: Path):
        self.settings = Settings(api_url="http://127.0.0.1:9/api/v1", api_key="k", cache_dir=cache,
                                 writeback_delay=WRITEBACK)
        cache.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.settings.journal_path)
        self.scheduled: list[tuple[int, float]] = []
        self.lock = StateLock()
        self.registry = Registry(self.settings, self.journal, Spool(self.settings.spool_dir), self.lock,
                                 lambda record, delay: self.scheduled.append((record.id, delay)),
                                 schedule_commit=lambda record, delay: self.scheduled.append((record.id, delay)))
        with self.lock:
            self.registry.replay_locked()

    def close(self):
        self.journal.close()


@pytest.fixture
def opened(tmp_path):
    made = []

    def open_() -> Opened:
        made.append(Opened(tmp_path / "cache"))
        return made[-1]
    yield open_
    for o in made:
        o.close()


def write(registry: Registry, session, name: str, data: bytes, close: bool = True):
    record = registry.create_file_locked(session, name, 0o644, 0, 0, local_only=name.startswith("."))
    registry.open_for_write_locked(record, rewrite=True)
    Path(registry.spool.path(record.id)).write_bytes(data)
    registry.wrote_locked(record, 0, len(data)).add(0, data)
    if close:
        registry.close_writer_locked(record, len(data))
    return record


def test_a_closed_file_whose_writers_exited_0_is_queued_at_once_and_journaled(opened):
    """The commit point: no writer left to wait for, the last close queues the file now
    (pending, with its content digest)."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        record = write(o.registry, session, "a.jpg", b"abc")
    assert record.state == PENDING
    assert o.scheduled == [(record.id, 0.0)]
    row = o.journal.files()[0]
    assert (row["state"], row["size"], row["server_name"]) == (PENDING, 3, "a.jpg")
    assert row["sha256"] == "xxh3-128:" + xxhash.xxh3_128(b"abc").hexdigest()


def test_a_file_whose_writer_runs_on_is_closed_until_its_exit_or_the_delay(opened):
    """A running writer's file waits, journaled as closed, for the write-back delay; its exit 0
    commits it at once, a failed exit holds it; a crash meanwhile holds it at the next mount."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        ok, failed, crashed = (write(o.registry, session, name, b"abc", close=False)
                               for name in ("ok.jpg", "failed.jpg", "crashed.jpg"))
        for record, tgid in ((ok, 101), (failed, 102), (crashed, 103)):
            record.writers = {tgid: 0}  # no such process (start 0): gone at the next mount
            o.registry.close_writer_locked(record, 3)
        assert [r.state for r in (ok, failed, crashed)] == [CLOSED] * 3
        assert o.scheduled == [(r.id, WRITEBACK) for r in (ok, failed, crashed)]
        o.registry.writer_exited_locked(ok, 101, "")
        o.registry.writer_exited_locked(failed, 102, "curl exited with status 18 right after writing it")
        o.registry.writer_exited_locked(crashed, 999, "")  # not its writer: nothing changes
    assert (ok.state, failed.state, crashed.state) == (PENDING, HELD, CLOSED)
    assert failed.last_error.startswith("curl exited with status 18")
    o.close()
    again = opened()
    states = {r["name"]: r["state"] for r in again.journal.files()}
    assert states == {"ok.jpg": PENDING, "failed.jpg": HELD, "crashed.jpg": HELD}
    with again.lock:
        held = next(r for r in again.registry.files_locked() if r.name == "failed.jpg")
        assert again.registry.release_held_locked(held)
    assert held.state == PENDING and held.unfinished == ""


def test_replay_queues_unfinished_uploads_for_a_resync_and_interrupts_open_files(opened):
    """After a restart: a queued or uploading file goes again at once (asking the server first);
    a file open for writing at the stop comes back interrupted, never uploaded."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        queued = write(o.registry, session, "a.jpg", b"a")
        sending = write(o.registry, session, "b.jpg", b"b")
        o.registry.claim_server_name_locked(sending, session, "u1")
        open_ = write(o.registry, session, "c.jpg", b"c", close=False)
    o.close()
    again = opened()
    files = {r.name: r for r in again.registry.files_locked()}
    assert sorted(again.scheduled) == sorted([(queued.id, 0.0), (sending.id, 0.0)])
    assert files["a.jpg"].needs_resync and files["b.jpg"].needs_resync
    assert files["b.jpg"].state == PENDING and files["b.jpg"].upload_id == "u1"
    assert files["c.jpg"].state == INTERRUPTED
    assert files["c.jpg"].unfinished == STOPPED_WHILE_WRITING
    assert open_.id == files["c.jpg"].id


def test_a_scratch_file_renamed_to_its_final_name_is_queued_at_once(opened):
    """rsync's and GIO's rename is the writer's "done": no write-back delay after it."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        record = write(o.registry, session, ".a.jpg.XyZ12", b"data")
        assert record.state == LOCAL and o.scheduled == []
        o.registry.rename_file_locked(record, session, "a.jpg", local_only=False)
    assert record.state == PENDING and record.server_name == "a.jpg"
    assert o.scheduled == [(record.id, 0.0)]


def test_server_names_are_unique_in_a_session_whatever_the_case(opened):
    """Two local names that flatten to one server name get names of their own."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        first = write(o.registry, session, "Photo.JPG", b"1")
        second = write(o.registry, session, "photo.jpg", b"2")
        third = write(o.registry, session, "Phöto.jpg", b"3")
    assert (first.server_name, second.server_name, third.server_name) == ("Photo.jpg", "photo_2.jpg",
                                                                        "Photo_3.jpg")


def test_unlink_keeps_a_file_the_server_may_hold_and_forgets_one_it_cannot(opened):
    """A deleted file whose PUT may have gone out stays known (the session cannot drop it);
    one never sent leaves nothing behind, and its server name is free again."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        sent = write(o.registry, session, "sent.jpg", b"1")
        o.registry.claim_server_name_locked(sent, session, "u1")
        unsent = write(o.registry, session, "unsent.jpg", b"2")
        o.registry.remove_file_locked(sent)
        o.registry.remove_file_locked(unsent)
        reused = write(o.registry, session, "unsent.jpg", b"3")
    assert session.unlinked == [sent] and sent.unlinked
    assert [r["name"] for r in o.journal.files()] == ["sent.jpg", "unsent.jpg"]
    assert reused.server_name == "unsent.jpg" and reused.id != unsent.id


def test_a_cancel_before_the_first_put_forgets_the_claim(opened):
    """A file whose first PUT never went out may change and be deleted without a trace."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        record = write(o.registry, session, "a.jpg", b"1")
        o.registry.claim_server_name_locked(record, session, "u1")
        o.registry.remove_file_locked(record)
        assert session.unlinked == [record]
        o.registry.forget_unsent_locked(record, session)
    assert session.unlinked == [] and o.journal.files() == []
    assert o.registry.file_locked(record.id) is None


def test_a_lost_session_sends_everything_again_unless_its_data_is_gone(opened):
    """After a 404 every file is pending again; a complete file whose spool copy was evicted is
    lost; the dead server session is returned for deletion unless a project may use it."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        o.registry.session_opened_locked(session, "u1", 3600)
        kept = write(o.registry, session, "kept.jpg", b"1")
        evicted = write(o.registry, session, "evicted.jpg", b"2")
        for record in (kept, evicted):
            o.registry.claim_server_name_locked(record, session, "u1")
            o.registry.set_state_locked(record, COMPLETE, server_received=1)
        o.registry.drop_spool_locked(evicted)
        o.scheduled.clear()
        assert o.registry.session_lost_locked(session, "u1") == "u1"
        assert o.registry.session_lost_locked(session, "u1") is None  # already handled
    assert kept.state == PENDING and kept.upload_id is None and o.scheduled == [(kept.id, 0.0)]
    assert evicted.state == "lost"
    assert session.upload_id is None


def test_a_session_a_project_may_use_is_never_returned_for_deletion(opened):
    """Deleting a session whose project exists may discard the project's input (api.md Part C)."""
    from fs360.engine.records import ProjectRequest
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        o.registry.session_opened_locked(session, "u1", 3600)
        o.registry.set_project_locked(session, ProjectRequest(options={}, state=P_CREATED, name="p"))
        assert o.registry.session_lost_locked(session, "u1") is None
        assert o.registry.discard_session_locked(session) is None


def test_a_writer_opening_a_queued_file_cancels_its_upload(opened):
    """A new writer bumps the generation (the queued entry goes stale) and the file is writing."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        record = write(o.registry, session, "a.jpg", b"1")
        generation = record.generation
        o.registry.open_for_write_locked(record)
    assert record.state == WRITING and record.generation != generation
    assert not o.registry.is_current_locked(record, generation)


def test_files_open_at_a_stop_come_back_with_the_size_their_spool_holds(opened):
    """Sizes are journaled at close: a file (or scratch file) still open when the mount stopped
    comes back with what its spool holds, not the size of its last close."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        visible = write(o.registry, session, "a.jpg", b"abc", close=False)
        scratch = write(o.registry, session, ".a.jpg.part", b"abcdef")     # closed at 6 bytes...
        o.registry.open_for_write_locked(scratch)                          # ...then appended to
        Path(o.registry.spool.path(scratch.id)).write_bytes(b"abcdefgh")
    assert [r["size"] for r in o.journal.files()] == [0, 6]
    o.close()
    again = opened()
    files = {r.name: r for r in again.registry.files_locked()}
    assert (files["a.jpg"].size, files["a.jpg"].state) == (3, INTERRUPTED)
    assert (files[".a.jpg.part"].size, files[".a.jpg.part"].unfinished) == (8, STOPPED_WHILE_WRITING)
    assert [r["size"] for r in again.journal.files()] == [3, 8]
    assert visible.id == files["a.jpg"].id


def test_a_scratch_file_made_whole_by_a_second_writer_is_still_unfinished_after_a_stop(opened):
    """A scratch file whose writer died is opened to append, then by a second writer with O_TRUNC:
    whole again in memory, but should the mount stop before the last close, the journal must not
    say whole, or a rename to its final name after the remount would upload a partial file."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        scratch = write(o.registry, session, ".a.jpg.part", b"abc")
        o.registry.writer_failed_locked(scratch, "the writer was killed by SIGKILL", INTERRUPTED)
        o.registry.open_for_write_locked(scratch)                  # appending: still unfinished
        o.registry.open_for_write_locked(scratch, rewrite=True)    # O_TRUNC: whole from byte 0
        assert scratch.unfinished == ""
    o.close()
    again = opened()
    with again.lock:
        (record,) = again.registry.files_locked()
        assert record.unfinished == STOPPED_WHILE_WRITING
        again.registry.rename_file_locked(record, again.registry.sessions["s"], "a.jpg", local_only=False)
    assert record.state == INTERRUPTED and again.scheduled == []


def test_truncating_a_file_to_zero_while_it_is_open_keeps_the_journal_saying_so(opened):
    """truncate(0) of an open file makes it whole in memory only; the journal keeps "being written"."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        scratch = write(o.registry, session, ".b.part", b"abc")
        o.registry.writer_failed_locked(scratch, "a write failed", INTERRUPTED)
        o.registry.open_for_write_locked(scratch)
        o.registry.truncated_locked(scratch, 0, listed=True)
    assert o.journal.files()[0]["unfinished"] == STOPPED_WHILE_WRITING
    with o.lock:
        o.registry.close_writer_locked(scratch, 0)
    assert o.journal.files()[0]["unfinished"] == ""


def opened_session(o: Opened):
    """Session "s", whose server session u1 this mount opened (it holds nothing yet)."""
    session = o.registry.create_session_locked("s", 0o755)
    o.registry.session_opened_locked(session, "u1", 3600)
    return session


def claimed(o: Opened, session, name: str, data: bytes):
    """A file written and closed whose first PUT to u1 is about to go."""
    record = write(o.registry, session, name, data)
    o.registry.claim_server_name_locked(record, session, "u1")
    return record


def names_of(session) -> dict[str, tuple[str | None, bool]]:
    """The session's name table as (the file's local name or None, on the server)."""
    return {key: (entry.record.name if entry.record else None, entry.on_server)
            for key, entry in session.names.items()}


def test_the_name_table_is_rebuilt_from_the_journal(opened):
    """After a restart each file's server name is its own again, and the server's listing is
    not known until it is asked."""
    o = opened()
    with o.lock:
        session = opened_session(o)
        write(o.registry, session, "A.jpg", b"1")
        sent = claimed(o, session, "a.jpg", b"2")
        write(o.registry, session, "dir/in-tree.jpg", b"3")
    assert names_of(session) == {"a.jpg": ("A.jpg", False), "a_2.jpg": ("a.jpg", True)}
    assert session.listing_known
    o.close()
    again = opened()
    replayed = again.registry.sessions["s"]
    assert names_of(replayed) == {"a.jpg": ("A.jpg", False), "a_2.jpg": ("a.jpg", False)}
    assert not replayed.listing_known and not again.registry.listing_known_locked(replayed, "u1")


def test_a_name_the_server_holds_for_another_file_is_never_chosen(opened):
    """The server's listing of a session from the journal: a name it holds bytes of that no file
    of ours was sent under is taken from the file that had chosen it, and from every new file,
    until the session's upload_id changes."""
    o = opened()
    with o.lock:
        session = opened_session(o)
        session.listing_known = False  # as a session from the journal: nothing asked yet
        chosen = write(o.registry, session, "a.jpg", b"1")
        o.registry.server_listing_locked(session, "u1", [RemoteFile("a.jpg", 5, 5, True),
                                                         RemoteFile("empty.jpg", 0, 5, False)])
        assert o.registry.listing_known_locked(session, "u1")
        assert names_of(session)["a.jpg"] == (None, True) and "empty.jpg" not in session.names
        assert o.registry.name_free_on_server_locked(chosen, session) == "a.jpg"
        newcomer = write(o.registry, session, "A.JPG", b"2")
        assert (chosen.server_name, newcomer.server_name) == ("a_2.jpg", "A_3.jpg")
        assert o.registry.name_free_on_server_locked(chosen, session) is None
        o.registry.session_lost_locked(session, "u1")
        assert "a.jpg" not in session.names and not session.listing_known
        assert o.registry.free_server_name_locked("a.jpg", session) == "a.jpg"
    assert [r["server_name"] for r in o.journal.files()] == ["a_2.jpg", "A_3.jpg"]


def test_a_name_the_server_holds_stays_taken_after_its_file_goes(opened):
    """A name the server may hold bytes under is never free again in that upload_id, even when
    its file leaves the session (a session that lost it forgets the file): a new file of the
    same name takes another; a cancelled claim frees it."""
    o = opened()
    with o.lock:
        session = opened_session(o)
        sent = claimed(o, session, "a.jpg", b"1")
        o.registry.release_server_name_locked(sent, session)
        assert names_of(session) == {"a.jpg": (None, True)}
        assert write(o.registry, session, "a.jpg", b"2").server_name == "a_2.jpg"
        cancelled = claimed(o, session, "b.jpg", b"3")
        o.registry.remove_file_locked(cancelled)
        o.registry.forget_unsent_locked(cancelled, session)
        assert "b.jpg" not in session.names
        assert write(o.registry, session, "b.jpg", b"4").server_name == "b.jpg"


def test_a_name_found_held_by_another_file_is_not_chosen_again(opened):
    """The server refused a first PUT because another file's bytes are under the name: the file
    takes the next free name and the taken one stays out of every later choice."""
    o = opened()
    with o.lock:
        session = opened_session(o)
        record = claimed(o, session, "a.jpg", b"1")
        o.registry.name_held_by_another_locked(record, session, "u1")
        assert record.server_name == "a_2.jpg" and record.upload_id is None
        assert names_of(session) == {"a.jpg": (None, True), "a_2.jpg": ("a.jpg", False)}
        assert write(o.registry, session, "a.jpg", b"2").server_name == "a_3.jpg"


def test_the_content_digest_is_never_taken_with_the_state_lock_held(opened):
    """It may read the whole spool file, and FUSE callbacks wait on the lock meanwhile: taken
    with the lock held it raises, whether the digest is known already or not."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        record = write(o.registry, session, "a.jpg", b"data")
        record.digest = None  # as after its queuing: only a read of the spool file knows it
        with pytest.raises(AssertionError, match="must not be held"):
            o.registry.content_digest(record)
    expected = "xxh3-128:" + xxhash.xxh3_128(b"data").hexdigest()
    assert o.registry.content_digest(record) == expected
    with o.lock, pytest.raises(AssertionError, match="must not be held"):
        o.registry.content_digest(record)


def test_a_file_the_server_refused_part_way_blocks_the_project_with_what_still_helps(opened):
    """A 413 after some of a file went up (the server's cap changed): deleting the file cannot help
    (the server keeps its part and cannot drop one file), so the project's reason says: a new folder."""
    from fs360.engine.projects import ProjectKeeper
    from fs360.engine.records import REJECTED
    o = opened()
    keeper = ProjectKeeper(o.settings, o.lock, o.registry, None, None, None, None)
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        done = write(o.registry, session, "a.jpg", b"a")
        cut = write(o.registry, session, "big.e57", b"b" * 100)
        for record, state, received in ((done, COMPLETE, 1), (cut, REJECTED, 60)):
            o.registry.set_state_locked(record, state, server_received=received)
        reason = keeper.blocking_reason_locked(session)
    assert "the server holds part of big.e57" in reason and "copy the other files into a new folder" in reason


def test_a_put_under_way_at_the_deletion_completes_the_deleted_file_only_as_it_was_sent(opened):
    """The answer of a PUT sent before the unlink says complete: the deleted file is complete (an
    identical re-creation may revive it) only for that attempt's content (its generation, the
    upload_id it claimed, its whole size) and only when the digest of what was sent is the one
    journaled; anything else leaves it as the server's partial file (first law)."""
    o = opened()
    with o.lock:
        session = o.registry.create_session_locked("s", 0o755)
        session.upload_id = "u1"
        record = write(o.registry, session, "a.jpg", b"held")
        digest = record.sha256
        assert digest
        picked = record.generation
        o.registry.claim_server_name_locked(record, session, "u1")
        o.registry.remove_file_locked(record)
        sent = o.registry.sent_after_deletion_locked
        assert not sent(record, picked, "u1", 4, "xxh3:" + "0" * 32)   # other bytes were sent
        assert not sent(record, picked, "u1", 4, None)                 # not known what was sent
        assert not sent(record, picked - 1, "u1", 4, digest)           # an earlier content's attempt
        assert not sent(record, picked, "u0", 4, digest)               # another server session
        assert not sent(record, picked, "u1", 3, digest)               # not whole
        assert record.state != COMPLETE
        assert sent(record, picked, "u1", 4, digest)
        assert record.state == COMPLETE and record.unlinked
        assert o.registry.revivable_locked(session, "a.jpg") is record
    assert {r["name"]: r["state"] for r in o.journal.files()} == {"a.jpg": COMPLETE}


def test_a_file_deleted_while_its_put_is_under_way_and_created_again_identical_is_that_file_again(opened):
    """unzip -o or tar -x again before the answer of the PUT under way at the deletion: the file
    keeps its spool copy for that attempt and may be created again (revivable). A re-creation being
    compared is listed, but the journal keeps it deleted until it is found identical (a remount
    meanwhile finds it deleted); deleted again (a different content), it still awaits that PUT. Once
    identical, the PUT's answer completes it as a listed file, as if it had never been deleted."""
    o = opened()
    with o.lock:
        session = opened_session(o)
        record = claimed(o, session, "a.jpg", b"held")
        picked, digest = record.generation, record.sha256
        o.scheduled.clear()
        o.registry.remove_file_locked(record)
        assert record.unlinked and record.deleted_generation == picked
        assert os.path.exists(o.registry.spool.path(record.id)) and not record.evicted  # kept for the PUT
        assert o.registry.revivable_locked(session, "a.jpg") is record
        for identical in (False, True):
            o.registry.relist_locked(record)   # created again: listed while compared
            assert session.files["a.jpg"] is record and not record.unlinked
            assert o.journal.files()[0]["unlinked"] == 1
            o.registry.revival_closed_locked(record)
            if not identical:
                o.registry.remove_file_locked(record)
                assert record.unlinked and record.deleted_generation == picked  # still that attempt's
                assert os.path.exists(o.registry.spool.path(record.id))
        o.registry.revived_locked(record)
        assert o.journal.files()[0]["unlinked"] == 0
        assert o.scheduled == []  # the attempt under way goes on: nothing queued
        assert o.registry.sent_after_deletion_locked(record, picked, "u1", 4, digest)
        assert record.state == COMPLETE and session.files["a.jpg"] is record and not session.unlinked
        o.registry.attempt_over_locked(record, picked)
        assert record.state == COMPLETE and record.deleted_generation == -1


@pytest.mark.parametrize("created_again", [False, True])
def test_the_attempt_under_way_at_a_deletion_ending_without_its_answer(opened, created_again):
    """The PUT under way at the deletion ends without completing the file (an error, a cut, a lost
    answer). Created again identical meanwhile: its upload goes on from where the server stands
    (queued, to be resynced). Still deleted: its spool copy goes, and its name is refused as
    the server holds part of it; a remount finds the same."""
    from fs360.fs.rules import check_uploadable_name_locked
    from fs360.errors import AccessDenied
    o = opened()
    with o.lock:
        session = opened_session(o)
        record = claimed(o, session, "a.jpg", b"held")
        picked = record.generation
        o.registry.remove_file_locked(record)
        if created_again:
            o.registry.relist_locked(record)
            o.registry.revival_closed_locked(record)
            o.registry.revived_locked(record)
        o.scheduled.clear()
        o.registry.attempt_over_locked(record, picked)
        assert record.deleted_generation == -1
        if created_again:
            assert record.state == PENDING and record.needs_resync and o.scheduled == [(record.id, 0.0)]
            assert os.path.exists(o.registry.spool.path(record.id))
            return
        assert record.state == UPLOADING and record.evicted and not os.path.exists(o.registry.spool.path(record.id))
        assert o.registry.revivable_locked(session, "a.jpg") is None and o.scheduled == []
        with pytest.raises(AccessDenied, match="the server holds part of 'a.jpg'"):
            check_uploadable_name_locked(None, session, "a.jpg")


def test_a_remount_while_the_put_under_way_at_a_deletion_has_no_answer(opened):
    """No attempt outlives the mount, nor does a compare: a file still deleted (or whose re-creation
    was still being compared) is one the server holds part of, its kept copy dropped at the replay,
    not revivable; one created again identical goes on uploading from its spool copy."""
    o = opened()
    with o.lock:
        session = opened_session(o)
        for name in ("deleted.jpg", "compared.jpg", "revived.jpg"):
            record = claimed(o, session, name, name.encode())
            o.registry.remove_file_locked(record)
            assert os.path.exists(o.registry.spool.path(record.id))
            if name != "deleted.jpg":
                o.registry.relist_locked(record)
            if name == "revived.jpg":
                o.registry.revival_closed_locked(record)
                o.registry.revived_locked(record)
    o.close()
    again = opened()
    with again.lock:
        session = again.registry.sessions["s"]
        assert sorted(f.name for f in session.unlinked) == ["compared.jpg", "deleted.jpg"]
        for deleted in session.unlinked:
            assert deleted.evicted and not os.path.exists(again.registry.spool.path(deleted.id))
            assert again.registry.revivable_locked(session, deleted.name) is None
        revived = session.files["revived.jpg"]
        assert revived.state == PENDING and revived.needs_resync and not revived.evicted
        assert os.path.exists(again.registry.spool.path(revived.id)) and (revived.id, 0.0) in again.scheduled
