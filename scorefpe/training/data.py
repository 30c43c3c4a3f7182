"""Batch sources for the training loop, stateless: batch (epoch, index) is a pure function of the
seed, so a resumed run sees exactly the batches the uninterrupted run saw.

A source yields the *local* rows of global batch number `index` of `epoch` for a data-parallel
rank: rows [rank * B / world, (rank + 1) * B / world) of the global batch.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from scorefpe.training.randomness import derive_seed, make_generator

Tensor = torch.Tensor


class BatchSource(Protocol):
    """What the loop needs from data: batches per epoch and a stateless batch lookup."""

    batch_size: int

    @property
    def steps_per_epoch(self) -> int: ...

    def batch(self, epoch: int, index: int, rank: int = 0, world: int = 1) -> Tensor: ...


def _check_split(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise ValueError(
            f"global batch size {batch_size} must be divisible by the number of processes {world}"
        )
    return batch_size // world


class TensorBatches:
    """Shuffled mini-batches of an in-memory tensor (N, ...), reshuffled every epoch.

    The permutation of epoch e is randperm(N) from a generator seeded by (seed, e); the last
    N mod batch_size samples of each epoch are dropped, so every step has a full batch.

    Raises:
        ValueError: batch_size < 1 or larger than N.
    """

    def __init__(self, data: Tensor, batch_size: int, *, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if data.shape[0] < batch_size:
            raise ValueError(
                f"batch_size {batch_size} is larger than the data set ({data.shape[0]} samples)"
            )
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self._perm_epoch: int | None = None
        self._perm: Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.data.shape[0] // self.batch_size

    def permutation(self, epoch: int) -> Tensor:
        """The order in which epoch `epoch` visits the samples, (N,) int64."""
        if self._perm_epoch != epoch:
            gen = make_generator(derive_seed(self.seed, "data", epoch))
            self._perm = torch.randperm(self.data.shape[0], generator=gen)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch(self, epoch: int, index: int, rank: int = 0, world: int = 1) -> Tensor:
        local = _check_split(self.batch_size, world)
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch index {index} outside [0, {self.steps_per_epoch})")
        start = index * self.batch_size + rank * local
        return self.data[self.permutation(epoch)[start : start + local]]


class SampledBatches:
    """Fresh samples every step from ``sample(n, generator) -> (n, ...)`` (synthetic densities).

    An "epoch" is ``steps_per_epoch`` steps. The global batch of (epoch, index) is drawn from a
    generator seeded by (seed, epoch, index) and split among ranks.
    """

    def __init__(
        self,
        sample: Callable[[int, torch.Generator], Tensor],
        batch_size: int,
        steps_per_epoch: int,
        *,
        seed: int = 0,
    ) -> None:
        for name, v in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.sample = sample
        self.batch_size = batch_size
        self._spe = steps_per_epoch
        self.seed = seed

    @property
    def steps_per_epoch(self) -> int:
        return self._spe

    def batch(self, epoch: int, index: int, rank: int = 0, world: int = 1) -> Tensor:
        local = _check_split(self.batch_size, world)
        gen = make_generator(derive_seed(self.seed, "data", epoch, index))
        full = self.sample(self.batch_size, gen)
        return full[rank * local : (rank + 1) * local]
