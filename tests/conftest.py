import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fs360.config import Settings
from fs360.emulator.harness import EmulatorProcess
from tests import scheduling
from tests.harness import FAST_EMULATOR_ARGS, FAST_TIMINGS, Mount, build_pjdfstest, fuse_mounts_under

FUSE_AVAILABLE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


@pytest.fixture(scope="session", autouse=True)
def private_xdg_dirs(tmp_path_factory):
    """Each test process (each xdist worker too) gets its own runtime, config and cache dirs,
    inherited by every mount, daemon and CLI it starts: `fs360 status` lists only its own
    mounts, and no user's config file or cache reaches a test. They live in pytest's base
    temporary dir, which pytest cleans up as it does the tests' own."""
    private = tmp_path_factory.mktemp("xdg")
    for var, name in (("XDG_RUNTIME_DIR", "run"), ("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache")):
        (private / name).mkdir(mode=0o700)
        os.environ[var] = str(private / name)


def pytest_collection_modifyitems(config, items):
    scheduling.longest_first(items)
    scheduling.share_estimates(config, items)
    if FUSE_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="needs /dev/fuse and fusermount3")
    for item in items:
        if "fuse" in item.keywords or any(d in str(item.fspath) for d in ("/fuse/", "/reliability/", "/cli/")):
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)  # xdist's hooks: a run with -p no:xdist has none
def pytest_configure_node(node):
    """In xdist's controller, for each worker: where it leaves the estimates for the scheduler."""
    node.workerinput[scheduling.ESTIMATES_KEY] = str(scheduling.estimates_file(node.config))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own (registered after this file)
def pytest_xdist_make_scheduler(config, log):
    """The longest tests first, each on a worker of its own (tests/scheduling.py), where the run
    asks for `load` or `loadscope`; another --dist (each, loadfile, worksteal) gets xdist's."""
    if config.getvalue("dist") in ("load", "loadscope"):
        return scheduling.LongestFirstScheduling(config, log)
    return None


@pytest.fixture(scope="module")
def module_emulator(tmp_path_factory):
    """One emulator process per test module (and xdist worker); `emulator` resets it per test."""
    with EmulatorProcess(tmp_path_factory.mktemp("emulator-data"), args=FAST_EMULATOR_ARGS) as emu:
        yield emu


@pytest.fixture
def emulator(module_emulator):
    """An emulator as new, without rate limits, projects ready after 0.3 s: the module's one,
    running again if a test stopped it, with no data, faults, flags, account or counts left
    from the tests before."""
    yield as_new(module_emulator)


def as_new(emu: EmulatorProcess) -> EmulatorProcess:
    """A module's emulator for the next test: running (on its port: no mount of a test before
    outlives its test) and reset, with its data."""
    if emu.proc is None or emu.proc.poll() is not None:
        emu.start()
    emu.reset(data=True)
    return emu


@pytest.fixture(scope="module", params=["default", "vendor"], ids=["default", "vendor"])
def module_profiled_emulator(request, tmp_path_factory):
    profile = request.param
    args = FAST_EMULATOR_ARGS + (["--profile", "vendor"] if profile == "vendor" else [])
    with EmulatorProcess(tmp_path_factory.mktemp(f"emulator-{profile}-data"), args=args) as emu:
        assert emu.profile == profile
        yield emu


@pytest.fixture
def profiled_emulator(module_profiled_emulator):
    """Like `emulator`, once per profile: api.md Part B ("default") and Part C ("vendor",
    `--profile vendor`). The profile's name is in `.profile` (EmulatorProcess reads it from its args)."""
    yield as_new(module_profiled_emulator)


@pytest.fixture
def emulator_factory(tmp_path):
    started = []

    def make(*args, data_dir=None):
        emu = EmulatorProcess(data_dir or tmp_path / f"emulator-{len(started)}", args=list(args))
        started.append(emu)
        return emu.start()

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size) -> a directory on a tmpfs of that size (e.g. "32m"), unmounted at teardown.
    Request it before mount_factory, so the mounts using it go first. Where no tmpfs can be
    mounted (not root) the test is skipped, or with `or_plain_dir=True` gets a plain directory."""
    made = []

    def make(size: str, or_plain_dir: bool = False) -> Path:
        target = tmp_path / f"tmpfs-{len(made)}"
        target.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            if or_plain_dir:
                return target
            pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
        made.append(target)
        return target

    yield make
    for target in made:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture(scope="session")
def pjdfstest_built(tmp_path_factory) -> Path:
    """pjdfstest built once per run: in the run's base temporary dir, which xdist's workers share
    (each has its own dir inside it), by the first worker that asks, under a file lock the others
    wait on; skips where its source or gcc is missing."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    built = shared / "pjdfstest"
    with open(shared / "pjdfstest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.is_dir() and build_pjdfstest(built) is None:
            pytest.skip("pjdfstest's source is not here (set PJDFSTEST_GIT_DIR to a git dir of pjd/pjdfstest)")
    return built


@pytest.fixture
def settings_for(tmp_path):
    """Settings of an engine talking to `emulator`, in a private cache dir."""
    def make(emulator, **changes) -> Settings:
        base = dict(api_url=emulator.base_url, api_key=emulator.api_key, cache_dir=tmp_path / "cache",
                    writeback_delay=0.05, rate_limits_enabled=False, project_poll_interval=0.2, **FAST_TIMINGS)
        base.update(changes)
        return Settings(**base)
    return make


@pytest.fixture
def make_model(settings_for):
    """make(emulator, start=True, **settings) -> a MountModel over its own Engine (no FUSE),
    talking to `emulator`; every engine made is stopped at the end."""
    from fs360.engine.engine import Engine
    from fs360.fs.model import MountModel
    made = []

    def make(emulator, start=True, **changes) -> MountModel:
        engine = Engine(settings_for(emulator, **changes))
        if start:
            engine.start()
        made.append(engine)
        return MountModel(engine, engine.settings)

    yield make
    for engine in made:
        engine.stop(5)  # nothing when the test stopped it


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so fixtures can see whether the body failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def no_mount_left_behind(request):
    """A test must unmount what it mounts: one that leaves a FUSE mount under its temporary dir
    (a `fs360 mount` whose unmount failed, a daemon killed without one) fails, unless its body
    already failed, and the mount is taken down lazily either way, so that it outlives neither
    the test nor pytest's clean-up of its dir. Set up before the mount fixtures, so it looks
    after they closed theirs."""
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    left = fuse_mounts_under(tmp_path) if tmp_path is not None else []
    for point in left:
        subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
    body = getattr(request.node, "report_call", None)
    if left and not (body is not None and body.failed):
        pytest.fail(f"the test left mounted: {', '.join(left)}")


def close_mounts(request, mounts: list[Mount]) -> None:
    """Unmounts every mount (all of them, whatever fails), then fails the test on any ERROR they
    logged, unless the body already failed: its own failure is the one to read."""
    failures = []
    for m in mounts:
        try:
            m.close()
        except AssertionError as exc:
            failures.append(exc)
    body = getattr(request.node, "report_call", None)
    if body is not None and body.failed:
        return
    if failures:
        raise failures[0]
    for m in mounts:
        m.assert_no_logged_errors()


@pytest.fixture
def mount(request, tmp_path, emulator):
    m = Mount(tmp_path, emulator).start()
    yield m
    close_mounts(request, [m])


@pytest.fixture
def mount_factory(request, tmp_path):
    made = []

    def make(emulator, **kwargs) -> Mount:
        m = Mount(tmp_path, emulator, **kwargs)
        made.append(m)
        return m.start()

    yield make
    close_mounts(request, made)
