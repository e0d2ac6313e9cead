"""The commit point in the path model: a file is final when its writers exited 0, held when one
failed right after writing it, and committed by the write-back delay when a writer runs on.

The processes are fed in (`Writers.identify` and `Writers.exited`), as /proc and the exit watch
would report them in a mount: no real process has to die. tests/fuse/test_commit_point.py runs
the same with real programs.
"""

import os
import subprocess
import signal

import pytest

from fs360.errors import InvalidArgument
from fs360.fs.exits import Closer
from tests.fed_writers import feed_writers
from tests.engine_helpers import file_state, wait_idle
from tests.harness import wait_until

O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
CP, CURL, SHELL, RSYNC = 4_000_001, 4_000_002, 4_000_003, 4_000_004
KILLED = 4_000_009  # its close comes while it is exiting, killed by SIGKILL
NAMES = {CP: "cp", CURL: "curl", SHELL: "bash", RSYNC: "rsync", KILLED: "dd"}


@pytest.fixture
def idle(emulator, make_model):
    """A model whose engine never uploads (a day-long write-back delay), with fed processes."""
    model = make_model(emulator, start=False, writeback_delay=86400.0)
    feed_writers(model, lambda pid: Closer(pid, NAMES[pid], signal.SIGKILL if pid == KILLED else None))
    return model


def write_file(model, path, data=b"data", pid=CP, flags=O_CREATE):
    fh = model.create(path, 0o644, flags) if flags & os.O_CREAT else model.open(path, flags)
    model.write(fh, data, 0 if not flags & os.O_APPEND else model.getattr(path)["st_size"])
    model.flush(fh, pid)
    model.release(fh)


def error_of(model, path):
    return model.getxattr(path, "user.fs360.error").decode()


@pytest.mark.parametrize("pid, status, state, reason", [
    (CP, 0, "pending", ""),
    (CURL, 18 << 8, "held", "curl exited with status 18 (in curl's manual: the transfer ended early) right after "
                            "writing it: it "
                            "is probably incomplete; copy it again, or run `fs360 release` on it if you know it "
                            "is whole"),
    (RSYNC, signal.SIGINT, "held", "rsync was killed by SIGINT right after writing it"),
    # rsync's receiver, stopped by its generator once the rest of rsync was cut off.
    (RSYNC, 19 << 8, "held", "rsync exited with status 19 (in rsync's manual: it was stopped by its other "
                             "process: the copy was cut off) right after writing it"),
    (CP, 1 << 8, "held", "cp exited with status 1 right after writing it"),  # no meaning known: the number
], ids=["exit 0: queued at once", "exit 18: held", "SIGINT: held", "rsync 19: in words", "cp 1: the number"])
def test_the_writers_exit_decides(idle, pid, status, state, reason):
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", pid=pid)
    assert file_state(idle, "s", "a.e57") == "closed"
    idle.writers.exited(pid, status)
    assert file_state(idle, "s", "a.e57") == state
    assert error_of(idle, "/s/a.e57").startswith(reason)
    # rsync gave it the source's size and time: a plain re-run would skip it (a hostile run).
    assert ("add -I, --ignore-times" in error_of(idle, "/s/a.e57")) == (pid == RSYNC)


def test_an_unchanged_reopen_does_not_end_the_wait_for_an_unknown_writer(idle):
    """truncate(1) by path: no process to watch, so the write-back delay stands in for its exit.
    A program that opens the file for writing and closes it unchanged meanwhile (a file manager)
    does not end that wait (the long random test's reading: it was queued at once)."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", b"whole content")
    idle.writers.exited(CP, 0)
    assert file_state(idle, "s", "a.e57") == "pending"
    idle.truncate("/s/a.e57", 5)
    assert file_state(idle, "s", "a.e57") == "closed"
    fh = idle.open("/s/a.e57", os.O_WRONLY)
    idle.flush(fh, SHELL)
    idle.release(fh)
    idle.writers.exited(SHELL, 0)
    assert file_state(idle, "s", "a.e57") == "closed"  # the delay still decides


PROGRAM, HELPER = 4_000_020, 4_000_021  # a program, and a helper it forked (no exec) that writes


@pytest.mark.parametrize("exits, state", [
    ([(PROGRAM, 0), (HELPER, 1 << 8)], "held"),     # the program did not wait for its helper's work
    ([(HELPER, 19 << 8), (PROGRAM, 0)], "pending"),  # rsync: the receiver ends first, its status says nothing
    ([(PROGRAM, 0), (HELPER, 0)], "pending"),
    ([(HELPER, 0), (PROGRAM, 1 << 8)], "held"),      # the program's failure decides, as ever
], ids=["program 0, then helper 1", "helper 19, then program 0", "program 0, then helper 0",
        "helper 0, then program 1"])
def test_a_file_closed_by_a_forked_helper_waits_for_the_helper_too(idle, exits, state):
    """The hostile run's find: a helper wrote half a file, its program exited 0, then the helper
    exited 1; the file was uploaded on the program's exit."""
    feed_writers(idle, lambda pid: Closer(PROGRAM, "python3", None, 7, helper=HELPER, helper_start=8)
                 if pid == HELPER else Closer(pid, NAMES.get(pid, "sh"), None))
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", pid=HELPER)
    for pid, status in exits:
        assert file_state(idle, "s", "a.e57") == "closed"
        idle.writers.exited(pid, status)
    assert file_state(idle, "s", "a.e57") == state
    if state == "held":
        assert error_of(idle, "/s/a.e57").startswith("python3 exited with status 1 right after writing it")


def test_an_exit_reported_before_the_release_still_decides(idle):
    """The kernel's RELEASE is asynchronous: a writer may have exited before it arrives."""
    idle.mkdir("/s", 0o755)
    for name, pid, status, state in (("ok.jpg", CP, 0, "pending"), ("bad.jpg", CURL, 1 << 8, "held")):
        fh = idle.create(f"/s/{name}", 0o644, O_CREATE)
        idle.write(fh, b"x", 0)
        idle.flush(fh, pid)
        idle.writers.exited(pid, status)
        idle.release(fh)
        assert file_state(idle, "s", name) == state


def test_every_writer_must_exit_0(idle):
    idle.mkdir("/s", 0o755)
    fh1 = idle.create("/s/a.jpg", 0o644, O_CREATE)
    fh2 = idle.open("/s/a.jpg", os.O_WRONLY)
    idle.write(fh1, b"ab", 0)
    idle.flush(fh1, CP)
    idle.release(fh1)
    idle.writers.exited(CP, 0)
    assert file_state(idle, "s", "a.jpg") == "writing"
    idle.flush(fh2, SHELL)
    idle.release(fh2)
    assert file_state(idle, "s", "a.jpg") == "closed"
    idle.writers.exited(SHELL, 0)
    assert file_state(idle, "s", "a.jpg") == "pending"


def test_two_programs_writing_one_file_at_once_leave_it_held(idle):
    """Two copies to one name at once (the hostile run's `slowwrite A & cp B`): what the file holds
    is a mix of both, though both exit 0."""
    idle.mkdir("/s", 0o755)
    fh1 = idle.create("/s/a.jpg", 0o644, O_CREATE)
    idle.write(fh1, b"A" * 100, 0)
    fh2 = idle.open("/s/a.jpg", os.O_WRONLY | os.O_TRUNC)
    idle.write(fh2, b"B" * 50, 0)
    idle.flush(fh2, CP)
    idle.release(fh2)
    idle.write(fh1, b"A" * 100, 100)
    idle.flush(fh1, CURL)
    idle.release(fh1)
    idle.writers.exited(CP, 0)
    idle.writers.exited(CURL, 0)
    assert file_state(idle, "s", "a.jpg") == "held"
    assert error_of(idle, "/s/a.jpg").startswith("cp and curl wrote it at the same time: it may hold a mix of both")


def test_one_handle_closed_by_two_programs_is_one_writer(idle):
    """A shell's redirection (`exec 3>f; cat a >&3; exec 3>&-`): one open, closed by cat and by
    the shell; and a later writing by another program (an append once the first closed it)."""
    idle.mkdir("/s", 0o755)
    fh = idle.create("/s/a.jpg", 0o644, O_CREATE)
    idle.write(fh, b"data", 0)
    idle.flush(fh, CP)
    idle.write(fh, b"more", 4)
    idle.flush(fh, SHELL)
    idle.release(fh)
    idle.writers.exited(CP, 0)
    idle.writers.exited(SHELL, 0)
    assert file_state(idle, "s", "a.jpg") == "pending"
    write_file(idle, "/s/a.jpg", b"tail", pid=CURL, flags=os.O_WRONLY | os.O_APPEND)
    idle.writers.exited(CURL, 0)
    assert file_state(idle, "s", "a.jpg") == "pending"


def test_a_writer_killed_with_the_file_open_interrupts_it(idle):
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/dd.las", pid=KILLED)
    assert file_state(idle, "s", "dd.las") == "interrupted"
    assert error_of(idle, "/s/dd.las").startswith("dd was killed by SIGKILL while writing it")


def test_an_unknown_writer_waits_for_the_delay(emulator, make_model):
    """No pid (or no watch): only the write-back delay commits the file."""
    model = make_model(emulator, writeback_delay=0.2)
    model.mkdir("/s", 0o755)
    fh = model.create("/s/a.jpg", 0o644, O_CREATE)
    model.write(fh, b"data", 0)
    model.flush(fh, None)
    model.release(fh)
    wait_idle(model.engine, 30, poll=0.05)
    assert file_state(model, "s", "a.jpg") == "complete"
    assert {f["name"] for f in emulator.files() if f["complete"]} >= {"a.jpg"}


def test_release_uploads_a_held_file_and_refuses_anything_else(idle):
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/b.jpg", pid=CURL)
    idle.writers.exited(CURL, 1 << 8)
    write_file(idle, "/s/c.jpg")
    with pytest.raises(InvalidArgument, match="not held"):
        idle.release_held("/s/c.jpg")
    assert "released" in idle.release_held("/s/b.jpg")
    assert file_state(idle, "s", "b.jpg") == "pending"


def test_a_held_or_interrupted_file_finished_by_a_successful_writer_is_whole(idle):
    """rsync --append, curl -C -, `cat rest >> f`: appending writer that exits 0."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/held.e57", b"first half", pid=CURL)
    idle.writers.exited(CURL, 18 << 8)
    write_file(idle, "/s/cut.e57", b"first half", pid=KILLED)
    assert (file_state(idle, "s", "held.e57"), file_state(idle, "s", "cut.e57")) == ("held", "interrupted")
    for name in ("held.e57", "cut.e57"):
        write_file(idle, f"/s/{name}", b" and the rest", pid=RSYNC, flags=os.O_WRONLY | os.O_APPEND)
        assert file_state(idle, "s", name) == "closed"
    idle.writers.exited(RSYNC, 0)
    assert file_state(idle, "s", "held.e57") == file_state(idle, "s", "cut.e57") == "pending"
    assert idle.getattr("/s/held.e57")["st_size"] == len(b"first half and the rest")


def test_opening_a_partial_file_without_writing_it_to_its_end_leaves_it_partial(idle):
    """touch, an append of nothing, a write in place, a write past a hole, fallocate or a
    truncate, by a process that exits 0: the file stays held (or interrupted). An open that
    changes nothing keeps its reason; one that changed parts says so now, with the way out (the
    earlier reason no longer says what happened last: rsync --inplace --no-whole-file re-run)."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", b"first half", pid=CURL)
    idle.writers.exited(CURL, 18 << 8)
    reason = error_of(idle, "/s/a.e57")

    def writing(*steps):
        fh = idle.open("/s/a.e57", os.O_WRONLY)
        for step in steps:
            step(fh)
        idle.flush(fh, CP)
        idle.release(fh)
        idle.writers.exited(CP, 0)
        return file_state(idle, "s", "a.e57")
    size = len(b"first half")
    assert writing() == "held"
    assert error_of(idle, "/s/a.e57") == reason
    # (A truncate writes no data: its program is not named.)
    for who, steps in (("cp", (lambda fh: idle.write(fh, b"F", 0),)),
                       ("cp", (lambda fh: idle.write(fh, b"!", size + 5),)),
                       ("a program", (lambda fh: idle.truncate("/s/a.e57", size + 100, fh),)),
                       ("cp", (lambda fh: idle.write(fh, b"rest", size), lambda fh: idle.write(fh, b"X", 2)))):
        assert writing(*steps) == "held"
        assert error_of(idle, "/s/a.e57") == (
            f"{who} changed parts of it in place after an earlier writing of it did not finish: the mount cannot "
            "tell that it is whole now; copy it again, or run `fs360 release` on it if you know it is whole "
            "(`rsync -I --whole-file` copies it whole)")
    # A rewrite from byte 0 in one run, without O_TRUNC (rsync resuming in place), makes it whole.
    assert writing(lambda fh: idle.write(fh, b"whole file", 0),
                   lambda fh: idle.truncate("/s/a.e57", len(b"whole file"), fh)) == "pending"


@pytest.mark.parametrize("order", ["earlier writer fails first", "touch exits first",
                                   "earlier writer fails while the touch holds it"])
def test_a_touch_of_a_closed_file_waits_for_its_writers_exit_too(idle, order):
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", b"first half", pid=CURL)
    assert file_state(idle, "s", "a.e57") == "closed"
    fh = idle.open("/s/a.e57", os.O_WRONLY)
    if order == "earlier writer fails while the touch holds it":
        idle.writers.exited(CURL, 18 << 8)
    idle.flush(fh, SHELL)
    idle.release(fh)
    if order == "earlier writer fails first":
        idle.writers.exited(CURL, 18 << 8)
        idle.writers.exited(SHELL, 0)
    elif order == "touch exits first":
        idle.writers.exited(SHELL, 0)
        assert file_state(idle, "s", "a.e57") == "closed"  # still waits for curl
        idle.writers.exited(CURL, 18 << 8)
    else:
        idle.writers.exited(SHELL, 0)
    assert file_state(idle, "s", "a.e57") == "held"
    assert error_of(idle, "/s/a.e57").startswith("curl exited with status 18")


def test_a_closed_file_rewritten_in_one_run_is_whole_whatever_its_earlier_writer_did(idle):
    """rsync resuming its partial file in place while the cut-off run's last process exits."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", b"first half", pid=CURL)
    fh = idle.open("/s/a.e57", os.O_WRONLY)
    idle.write(fh, b"the whole file", 0)
    idle.flush(fh, RSYNC)
    idle.release(fh)
    idle.writers.exited(CURL, 18 << 8)
    assert file_state(idle, "s", "a.e57") == "closed"
    idle.writers.exited(RSYNC, 0)
    assert file_state(idle, "s", "a.e57") == "pending"


def test_an_append_whose_writer_fails_again_stays_held(idle):
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", b"part", pid=CURL)
    idle.writers.exited(CURL, 18 << 8)
    write_file(idle, "/s/a.e57", b"more", pid=RSYNC, flags=os.O_WRONLY | os.O_APPEND)
    idle.writers.exited(RSYNC, 12 << 8)
    assert file_state(idle, "s", "a.e57") == "held"
    assert error_of(idle, "/s/a.e57").startswith("rsync exited with status 12")


def test_a_scratch_file_renamed_to_its_final_name_waits_for_the_renamer(idle):
    """rsync --partial, cut off: it renames the partial temp file to the final name, then exits 20."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/.a.e57.XyZ123", pid=RSYNC)
    write_file(idle, "/s/.b.e57.XyZ456", pid=CP)
    idle.rename("/s/.a.e57.XyZ123", "/s/a.e57", pid=RSYNC)
    idle.rename("/s/.b.e57.XyZ456", "/s/b.e57", pid=CP)
    assert file_state(idle, "s", "a.e57") == file_state(idle, "s", "b.e57") == "closed"
    idle.writers.exited(RSYNC, 20 << 8)
    idle.writers.exited(CP, 0)
    assert (file_state(idle, "s", "a.e57"), file_state(idle, "s", "b.e57")) == ("held", "pending")


def test_a_scratch_file_whose_writer_failed_is_held_when_renamed(idle):
    """curl -o f.part cut off, then `mv f.part f` by the user: still held."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/f.part", pid=CURL)
    idle.writers.exited(CURL, 18 << 8)
    idle.rename("/s/f.part", "/s/f.jpg", pid=SHELL)
    assert file_state(idle, "s", "f.jpg") == "held"


def crashed_while_closed(emulator, make_model, cache, writer: Closer):
    """A model that closed a.jpg written by `writer`, crashed, and came back on the same cache."""
    model = make_model(emulator, start=False, writeback_delay=86400.0, cache_dir=cache)
    feed_writers(model, lambda pid: writer)
    model.mkdir("/s", 0o755)
    write_file(model, "/s/a.jpg")
    assert file_state(model, "s", "a.jpg") == "closed"
    model.engine.journal.close()  # a crash: nothing more reaches the journal
    return make_model(emulator, start=False, cache_dir=cache)


def test_a_file_closed_at_a_crash_is_held_at_the_next_mount(emulator, make_model, tmp_path):
    again = crashed_while_closed(emulator, make_model, tmp_path / "c", Closer(CP, "cp", None))
    assert file_state(again, "s", "a.jpg") == "held"
    assert "mount stopped before the program that wrote it had finished" in error_of(again, "/s/a.jpg")


def test_a_file_closed_at_a_crash_whose_writer_still_runs_waits_on(emulator, make_model, tmp_path):
    """The journal keeps each awaited writer with its start time: the very same process still
    running after the restart is awaited again (here: this test's own process)."""
    from fs360.engine.processes import started_at
    me = Closer(os.getpid(), "python", None, started_at(os.getpid()))
    again = crashed_while_closed(emulator, make_model, tmp_path / "c", me)
    assert file_state(again, "s", "a.jpg") == "closed"
    feed_writers(again, lambda pid: me)
    again.writers._watch_again()
    again.writers.exited(os.getpid(), 0)
    assert file_state(again, "s", "a.jpg") == "pending"


def crashed_with_scratch(emulator, make_model, cache, writer: Closer, renamed_first: bool):
    """A model whose `writer` closed a file, renamed to a scratch name (`renamed_first`: it was
    written under its final name, then renamed; else written as scratch), then crashed; the model
    that comes back on the same cache dir."""
    model = make_model(emulator, start=False, writeback_delay=86400.0, cache_dir=cache)
    feed_writers(model, lambda pid: writer)
    model.mkdir("/s", 0o755)
    if renamed_first:
        write_file(model, "/s/a.jpg")
        assert file_state(model, "s", "a.jpg") == "closed"
        model.rename("/s/a.jpg", "/s/.a.jpg.part")
    else:
        write_file(model, "/s/.a.jpg.part")
    model.engine.journal.close()  # a crash: nothing more reaches the journal
    model.engine._stopping = True  # nor does the stop at the test's end (the process is gone)
    return make_model(emulator, start=False, writeback_delay=86400.0, cache_dir=cache)


@pytest.mark.parametrize("renamed_first", [True, False], ids=["closed, then renamed to scratch", "written as scratch"])
def test_a_scratch_file_whose_writer_ended_unseen_is_held_when_it_gets_its_final_name(emulator, make_model, tmp_path,
                                                                                      renamed_first):
    """The long random test's find: a closed file renamed to a scratch name when the mount
    crashed, then renamed back after the restart, was committed by the renamer's exit alone,
    although the program that wrote it ended while no daemon watched (it may have failed)."""
    again = crashed_with_scratch(emulator, make_model, tmp_path / "c", Closer(CP, "cp", None), renamed_first)
    feed_writers(again, lambda pid: Closer(pid, NAMES[pid], None))
    again.rename("/s/.a.jpg.part", "/s/a.jpg", pid=SHELL)
    assert file_state(again, "s", "a.jpg") == "held"
    assert "mount stopped before the program that wrote it had finished" in error_of(again, "/s/a.jpg")


def test_a_scratch_file_whose_writer_still_runs_after_a_crash_waits_for_it(emulator, make_model, tmp_path):
    from fs360.engine.processes import started_at
    me = Closer(os.getpid(), "python", None, started_at(os.getpid()))
    again = crashed_with_scratch(emulator, make_model, tmp_path / "c", me, renamed_first=True)
    feed_writers(again, lambda pid: me if pid == os.getpid() else Closer(pid, NAMES[pid], None))
    again.writers._watch_again()
    again.rename("/s/.a.jpg.part", "/s/a.jpg", pid=SHELL)
    again.writers.exited(SHELL, 0)
    assert file_state(again, "s", "a.jpg") == "closed"  # the writer from before the crash still runs
    again.writers.exited(os.getpid(), 0)
    assert file_state(again, "s", "a.jpg") == "pending"


def test_a_commit_due_sooner_than_every_other_wakes_the_commit_thread(emulator, make_model):
    """The commit thread sleeps until the first due commit and is woken only by a sooner one:
    a file due now, queued behind one due in an hour, is committed now."""
    model = make_model(emulator, writeback_delay=3600.0)
    model.mkdir("/s", 0o755)
    for name in ("late.jpg", "soon.jpg"):
        fh = model.create(f"/s/{name}", 0o644, O_CREATE)
        model.write(fh, b"data", 0)
        model.flush(fh, None)  # an unknown writer: only the write-back delay commits it
        model.release(fh)
    engine = model.engine
    with engine.lock:
        soon = next(f for f in engine.registry.files_locked() if f.name == "soon.jpg")
        engine._schedule_commit_locked(soon, 0.0)
    wait_until(lambda: file_state(model, "s", "soon.jpg") == "complete", 30, 0.05, what="soon.jpg uploaded")
    assert file_state(model, "s", "late.jpg") == "closed"


def test_a_writer_seen_to_exit_0_leaves_the_journaled_writers(idle):
    """A touch during the commit wait exits 0 while the program that wrote the file runs on: the
    journal keeps only the program, so a restart watches it again instead of holding the file for
    a writer that 'ended unseen'."""
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", b"data", pid=CURL)
    fh = idle.open("/s/a.e57", os.O_WRONLY | os.O_APPEND)
    idle.write(fh, b" more", 4)
    idle.flush(fh, SHELL)
    idle.release(fh)

    def journaled() -> str:
        return next(row["writers"] for row in idle.engine.journal.files() if row["name"] == "a.e57")
    assert str(SHELL) in journaled() and str(CURL) in journaled()
    idle.writers.exited(SHELL, 0)
    assert file_state(idle, "s", "a.e57") == "closed"
    assert str(SHELL) not in journaled() and str(CURL) in journaled()


def test_a_helper_whose_start_could_not_be_read_counts_as_still_there():
    """Unsure whether a helper outlived its program (its start time was not read), the mount lets
    the helper's own exit decide too: before, such a helper counted as gone and its failure was
    ignored (a review found it failing open)."""
    from fs360.engine.processes import started_at
    from fs360.fs.exits import _still_there
    me = os.getpid()
    assert _still_there(me, 0)
    assert _still_there(me, started_at(me))
    assert not _still_there(me, started_at(me) + 1)  # the pid of another, later process
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: gone from /proc
    assert not _still_there(dead.pid, 0)


@pytest.mark.parametrize("refused_how, reason", [
    ("symlink", "cp exited with status 1 after the mount refused link.jpg (operation not permitted; see \"refused\" "
                "in its folder's status) and 1 more, right after writing this file: it may well be whole (the program failed "
                "over what the mount refused), but the mount cannot tell; copy it again, or run `fs360 release` on "
                "it if you know it is whole"),
    ("tab", "cp exited with status 1 after the mount refused a\tb.jpg (invalid argument; see \"refused\" in its "
            "folder's status) and 1 more, right after writing this file"),
    ("other session", "cp exited with status 1 after the mount refused t/link.jpg (operation not permitted; see "
                      "\"refused\" in its folder's status)"),
], ids=["a link cp -a made", "a name with a tab", "a refusal in another folder"])
def test_a_held_files_reason_says_the_mount_refused_its_program_first(idle, refused_how, reason):
    """`cp -a` of a folder holding a link (EPERM) or a name with a tab (EINVAL) exits 1; unzip whose
    create got EACCES exits 50 ("the disk was full", says its manual): the files they wrote are
    held, and the reason says the mount's refusal came first instead of quoting the manual."""
    from fs360.errors import Fs360Error
    idle.mkdir("/s", 0o755)
    idle.mkdir("/t", 0o755)
    write_file(idle, "/s/a.e57", pid=CP)
    refused = {"symlink": "/s/link.jpg", "tab": "/s/a\tb.jpg", "other session": "/t/link.jpg"}[refused_how]
    with pytest.raises(Fs360Error) as info:
        if refused_how == "tab":
            idle.create(refused, 0o644, O_CREATE)
        else:
            idle.refuse_special(refused, "symbolic links")
    idle.refused_to(CP, refused, info.value.errno)   # what the FUSE adapter tells of each refusal
    idle.refused_to(CP, "/s/second.jpg", info.value.errno)
    idle.writers.exited(CP, 1 << 8)
    assert file_state(idle, "s", "a.e57") == "held"
    assert error_of(idle, "/s/a.e57").startswith(reason), error_of(idle, "/s/a.e57")


def test_without_a_refusal_the_manuals_meaning_is_said_as_the_manuals(idle):
    """unzip exits 50 "the disk was full" in its manual for any failed create: said as its manual's word."""
    idle.writers.identify = lambda pid: Closer(pid, "unzip", None)
    idle.mkdir("/s", 0o755)
    write_file(idle, "/s/a.e57", pid=CP)
    idle.writers.exited(CP, 50 << 8)
    assert error_of(idle, "/s/a.e57").startswith("unzip exited with status 50 (in unzip's manual: the disk was "
                                                 "full) right after writing it")
