"""Which hash says that two files' bytes are the same.

fs360 hashes a file's bytes twice on their way up: while they are written (to accept an
identical re-copy of a file the server holds) and as they are sent (to hold back the last
chunk when the spool copy changed since). Both are identity checks against our own earlier
reading of our own spool, with no adversary: they need a hash that practically never
collides by accident, not a cryptographic one. XXH3-128 does that at about 0.02 CPU-s per
GiB on the test machine against sha256's 0.6 (BENCHMARKS.md, issue 21).

A digest is kept as text tagged with its hash (`xxh3-128:` and 32 hex digits). An untagged
one (64 hex digits) is a sha256 journaled by an earlier build: it is still compared, by
sha256. The sha256 stays where a person reads it: the archive's `sha256` in status.json.
"""

from __future__ import annotations

import hashlib

import xxhash

IDENTITY_TAG = "xxh3-128:"


def is_legacy_digest(digest: str | None) -> bool:
    """A sha256 journaled by a build before the identity hash."""
    return digest is not None and not digest.startswith(IDENTITY_TAG)


def hash_like(digest: str | None):
    """A new running hash of the kind that made `digest` (None: the identity hash)."""
    return hashlib.sha256() if is_legacy_digest(digest) else xxhash.xxh3_128()


def tagged_hexdigest(running) -> str:
    """The text form of a running hash's digest: tagged unless it is a sha256."""
    if running.name == "sha256":
        return running.hexdigest()
    return IDENTITY_TAG + running.hexdigest()

