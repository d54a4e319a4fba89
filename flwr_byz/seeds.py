"""Seeds derived from labels, so every process draws the same random stream for the same labels."""

from __future__ import annotations

import hashlib

import torch


def derived_seed(*parts: object) -> int:
    """A 63-bit seed hashed from ``parts`` (e.g. seed, node, round, stream), stable across processes."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derived_seed` of ``parts``."""
    return torch.Generator().manual_seed(derived_seed(*parts))
