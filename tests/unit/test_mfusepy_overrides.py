"""fs360 overrides six of mfusepy's internal methods (fs/mfusepy_overrides.py). If mfusepy's own
code of any of them changes, this fails: re-read the new upstream method, check the override
still does what its row in the module's table says, then record the new digest here."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect

import mfusepy
import pytest

from fs360.fs.mfusepy_overrides import Fs360Fuse

# sha256 (first 16 hex digits) of the upstream source of each overridden method, mfusepy 3.1.x.
UPSTREAM = {
    "_wrapper": "16cfc7a6062cbd51",
    "readdir_fuse_3": "997320c8f27da1ce",
    "utimens_fuse_3": "93951747f47f0085",
    "truncate_fuse_3": "b7735b794cbc81aa",
    "getxattr": "755693805d43840c",
    "write": "c468142fe74149a5",
    "fgetattr": "32b98ee1808139cf",
}


def test_the_pinned_minor_version_is_installed():
    major, minor, *_ = importlib.metadata.version("mfusepy").split(".")
    assert (major, minor) == ("3", "1"), "pyproject pins mfusepy 3.1.x: the overrides were written for it"


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_overridden_upstream_methods_are_unchanged(name):
    upstream = getattr(mfusepy.FUSE, name)
    digest = hashlib.sha256(inspect.getsource(upstream).encode()).hexdigest()[:16]
    assert digest == UPSTREAM[name], f"mfusepy.FUSE.{name} changed upstream: re-check fs360's override of it"
    # libfuse calls the override exactly as it called mfusepy's method.
    assert list(inspect.signature(getattr(Fs360Fuse, name)).parameters) == \
        list(inspect.signature(upstream).parameters)


def test_every_override_is_listed():
    overridden = {n for n, v in vars(Fs360Fuse).items() if callable(v) and hasattr(mfusepy.FUSE, n)}
    assert overridden == set(UPSTREAM)
