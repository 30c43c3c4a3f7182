"""Counter-based randomness for training: every random draw is a function of (seed, step, ...).

Each training step gets fresh generators seeded from a 64-bit hash of (seed, stream, step, rank).
A resumed run therefore draws exactly what the uninterrupted run drew from the step counter
alone, whatever happened before, and no generator state has to survive in a checkpoint.

Data-parallel runs: the per-sample noise of the loss (t, z) is drawn for the whole global batch
on every rank from the same generator and each rank keeps its own rows, so K processes with
global batch B draw the same numbers as one process with batch B (their loss curves agree to
float32 reduction-order round-off). Hutchinson probes are drawn inside the operators for the
local rows from a per-rank stream: equal in distribution to one process, not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK = (1 << 64) - 1
STREAMS = {"noise": 1, "probe": 2, "data": 3}


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def derive_seed(seed: int, stream: str, *counters: int) -> int:
    """A 63-bit seed mixing (seed, stream, counters...) through splitmix64 (distinct inputs give
    unrelated seeds). Raises ValueError for an unknown stream."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; choose one of {sorted(STREAMS)}")
    h = _splitmix64(int(seed) & _MASK)
    for c in (STREAMS[stream], *counters):
        h = _splitmix64(h ^ (int(c) & _MASK))
    return h >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@dataclass(frozen=True)
class StepContext:
    """What a loss function needs to draw its randomness for one step on one rank.

    step: optimizer steps done before this one (0-based); rank/world: data-parallel position;
    device: where the draws go. Local batches are contiguous blocks of the global batch:
    rank r holds rows [r * B_local, (r + 1) * B_local).
    """

    seed: int
    step: int
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def generator(self, stream: str, *, per_rank: bool) -> torch.Generator:
        """A fresh generator for this step (and this rank when per_rank)."""
        counters = (self.step, self.rank) if per_rank else (self.step,)
        return make_generator(derive_seed(self.seed, stream, *counters), self.device)

    def _rows(self, draw: torch.Tensor, local: int) -> torch.Tensor:
        return draw[self.rank * local : (self.rank + 1) * local]

    def randn_rows(
        self, local_shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        """N(0, 1) draws for this rank's rows of a global (world * B_local, ...) draw."""
        b = local_shape[0]
        full = torch.randn(
            (b * self.world, *local_shape[1:]), generator=gen, dtype=dtype, device=self.device
        )
        return self._rows(full, b)

    def rand_rows(self, n_local: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """U[0, 1) draws of shape (n_local,) for this rank's rows of a global draw."""
        full = torch.rand(n_local * self.world, generator=gen, dtype=dtype, device=self.device)
        return self._rows(full, n_local)
