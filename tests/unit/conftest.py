"""Fixtures of the unit tables."""

import pytest

from fs360.emulator.harness import EmulatorProcess
from tests.harness import FAST_EMULATOR_ARGS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One emulator for a module's whole table: its rows keep to their own sessions (they
    filter what the server holds by upload_id), so one start serves them all."""
    with EmulatorProcess(tmp_path_factory.mktemp("emulator"), args=FAST_EMULATOR_ARGS) as emu:
        yield emu
