"""Scenario 7: hostile input through the mount. Hostile names, markers, caps and extensions are
tables in tests/unit/test_rule_{names,create,errno}.py, each with a smoke test in tests/fuse/."""

from __future__ import annotations

import errno
import threading

from tests.harness import write_random

from .common import KiB, assert_accounted, pick, settle


def _errno_of(action) -> int | None:
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


def test_fifty_concurrent_writers(tmp_path, emulator, mount_factory):
    writers = pick(50, 200)
    mount = mount_factory(emulator)
    session = "crowd"
    folder = mount.mountpoint / session
    folder.mkdir()
    written: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def writer(i: int) -> None:
        name = f"w-{i:03d}.jpg"
        try:
            start.wait(30)
            sha = write_random(folder / name, 64 * KiB + 4099 * i, seed=f"w{i}")
            with lock:
                written[name] = sha
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer hangs"
    assert not errors, errors[:5]
    assert len(written) == writers
    states = settle(mount, session, timeout=pick(120, 300))
    assert states == {n: "complete" for n in written}, {n: s for n, s in states.items() if s != "complete"}
    assert_accounted(mount, emulator, {session: written})


def test_refused_operations_log_no_traceback_at_debug(tmp_path, emulator, mount_factory):
    mount = mount_factory(emulator)  # the harness's default: --log-level debug
    (mount.mountpoint / "s").mkdir()
    assert _errno_of(lambda: (mount.mountpoint / "loose.jpg").write_bytes(b"x")) == errno.EPERM
    assert _errno_of(lambda: (mount.mountpoint / "s" / "bad\x01.jpg").write_bytes(b"x")) == errno.EINVAL
    mount.unmount()
    mount.assert_no_logged_errors()
