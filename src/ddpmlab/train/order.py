"""The data order: a pure function of (seed, step), the same for any number of processes.

Epoch ``e`` is the permutation drawn from ``seed`` and ``e``; step ``s`` takes batch
``s mod (N // B)`` of epoch ``s // (N // B)`` (the last incomplete batch of an epoch is
dropped). Each rank then takes its own contiguous slice of the global batch.
"""

from __future__ import annotations

import torch

#: torch generators take seeds below 2**64; the epoch seeds are kept below 2**63 (those of
#: ``train.seed`` < 2**63 / 1,000,003, every seed used before this bound, are unchanged)
SEED_MODULUS = 2**63


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch ``epoch``'s permutation (any ``train.seed`` in 0..2**63-1)."""
    return (int(seed) * 1_000_003 + int(epoch) + 1) % SEED_MODULUS


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g)


class BatchOrder:
    """The indices of the global batch of each step (one epoch's permutation cached)."""

    def __init__(self, seed: int, n: int, batch_size: int) -> None:
        self.seed, self.n, self.batch_size = seed, n, batch_size
        self._cache: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> torch.Tensor:
        per_epoch = self.n // self.batch_size
        epoch, pos = divmod(step, per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, epoch_permutation(self.seed, epoch, self.n))
        b = self.batch_size
        return self._cache[1][pos * b:(pos + 1) * b]
