"""Where the points of a model check come from: a data set, or the model's own samples."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scorefpe.data.synthetic import DATASETS, get_dataset
from scorefpe.sde import SDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["DataSource", "data_sampler", "model_sampler", "pool_sampler"]


@dataclass(frozen=True)
class DataSource:
    """sample(n, generator) -> (n, ...) float64 draws of x0; truth(sde) -> closed-form score or
    None; name for the report."""

    name: str
    sample: Callable[[int, "torch.Generator | None"], Tensor]
    truth: Callable[[SDE], ScoreFn] | None = None


def pool_sampler(pool: Tensor) -> Callable[[int, "torch.Generator | None"], Tensor]:
    """Draw n rows of ``pool`` (N, ...) uniformly with replacement, using the generator."""
    if pool.dim() < 2 or pool.shape[0] < 1:
        raise ValueError(f"sample pool must have shape (N, ...) with N >= 1, got {tuple(pool.shape)}")

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(0, pool.shape[0], (n,), generator=generator)
        return pool[idx]

    return sample


def data_sampler(data: str) -> DataSource:
    """The x0 source named by ``--data``: a built-in synthetic set (with its exact score where it
    has one), ``mnist`` (scorefpe.data.mnist.mnist_tensor, imported lazily), or a ``.npy`` file
    of samples shaped (N, ...).

    Raises:
        ValueError: unknown name, missing or malformed file (the message names it).
    """
    if data.endswith(".npy"):
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"--data: file {data!r} does not exist")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as err:
            raise ValueError(f"--data: cannot read {data!r}: {type(err).__name__}: {err}") from err
        if arr.ndim < 2 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(
                f"--data: {data!r} must hold a numeric array of shape (N, ...) with a feature "
                f"axis, got {arr.dtype} {arr.shape}"
            )
        pool = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
        if not bool(torch.isfinite(pool).all()):
            raise ValueError(f"--data: {data!r} contains NaN or infinite values")
        return DataSource(data, pool_sampler(pool))
    if data == "mnist":
        try:
            mod = importlib.import_module("scorefpe.data.mnist")
            pool = mod.mnist_tensor("test")
        except Exception as err:
            raise ValueError(f"--data mnist: cannot load MNIST ({type(err).__name__}: {err})") from err
        if isinstance(pool, tuple):
            pool = pool[0]
        return DataSource("mnist", pool_sampler(torch.as_tensor(pool).double()))
    if data in DATASETS:
        ds = get_dataset(data)
        truth = ds.score_fn if ds.has_score else None
        return DataSource(data, ds.sample, truth)
    raise ValueError(
        f"unknown --data {data!r}; choose a .npy file, 'mnist' or one of {sorted(DATASETS)}"
    )


def model_sampler(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    n_pool: int,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    rtol: float = 1e-4,
    atol: float = 1e-4,
    batch_size: int | None = None,
    progress: bool = False,
) -> Callable[[int, "torch.Generator | None"], Tensor]:
    """x0 from the model's own samples: ``n_pool`` probability-flow ODE samples (T -> t_min,
    `scorefpe.sampling.samplers.probability_flow_ode`), drawn once, then resampled.

    shape: per-sample shape (without the batch axis). Cost: the ODE solve, about 6 F per
    accepted RK45 step on the pool.

    Raises:
        ValueError / RuntimeError: from the ODE sampler (bad shape, solver failure).
    """
    from scorefpe.sampling.samplers import probability_flow_ode

    res = probability_flow_ode(
        score_fn, sde, (n_pool, *shape), t_min=t_min, rtol=rtol, atol=atol,
        generator=generator, dtype=dtype, device=device, batch_size=batch_size, progress=progress,
    )
    if not bool(torch.isfinite(res.samples).all()):
        raise ValueError("the probability-flow ODE samples of the model contain NaN or inf")
    return pool_sampler(res.samples.detach().to("cpu", torch.float64))
