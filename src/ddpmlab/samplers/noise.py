"""Where sampler noise comes from: one generator, or one generator per sample.

With one ``torch.Generator`` a batch draws its noise in one call. With a list of generators
(one per sample, EDM's ``StackedRandomGenerator``), sample k's noise depends only on its own
generator, so sample k of a run is the same whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, device: torch.device | str | None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` ``[N, *]`` from ``generator`` (see module doc)."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]} samples")
    return torch.stack(
        [torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in gens]
    )


def per_sample_generators(seed: int, indices: Sequence[int],
                          device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample index, seeded from (seed, index) alone."""
    gens = []
    for k in indices:
        g = torch.Generator(device=device)
        # A fixed mixing of the run seed and the sample index (splitmix-style constants).
        g.manual_seed((int(seed) * 0x9E3779B97F4A7C15 + int(k) * 0xBF58476D1CE4E5B9) % (2**63))
        gens.append(g)
    return gens
