import os
import shutil

import pytest

from fs360.config import Settings
from fs360.emulator.harness import EmulatorProcess
from tests.harness import FAST_EMULATOR_ARGS, Mount

FUSE_AVAILABLE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def pytest_collection_modifyitems(config, items):
    if FUSE_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="needs /dev/fuse and fusermount3")
    for item in items:
        if "fuse" in item.keywords or any(d in str(item.fspath) for d in ("/fuse/", "/reliability/", "/cli/")):
            item.add_marker(skip)


@pytest.fixture
def emulator(tmp_path):
    """A fresh emulator without rate limits, projects ready after 1 s."""
    with EmulatorProcess(tmp_path / "emulator-data", args=FAST_EMULATOR_ARGS) as emu:
        yield emu


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
def settings_for(tmp_path):
    """Settings of an engine talking to `emulator`, in a private cache dir."""
    def make(emulator, **changes) -> Settings:
        base = dict(api_url=emulator.base_url, api_key=emulator.api_key, cache_dir=tmp_path / "cache",
                    writeback_delay=0.05, backoff_base=0.05, backoff_cap=1.0, rate_limits_enabled=False,
                    project_poll_interval=0.2)
        base.update(changes)
        return Settings(**base)
    return make


@pytest.fixture
def mount(tmp_path, emulator):
    with Mount(tmp_path, emulator) as m:
        yield m


@pytest.fixture
def mount_factory(tmp_path):
    made = []

    def make(emulator, **kwargs) -> Mount:
        m = Mount(tmp_path, emulator, **kwargs)
        made.append(m)
        return m.start()

    yield make
    for m in made:
        m.__exit__(None, None, None)
