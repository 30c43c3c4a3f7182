"""Per-time residual curves r_FP(t) and r_DSM(t) over a grid of t (2026 paper eq. 12; FP-Diffusion Fig. 6).

    r_FP(t)  = 1/D E_{x ~ q_t} ||eps[s](x, t)||_2^2        (2026 paper; FP-Diffusion plots the unsquared norm)
    r_DSM(t) = 1/D E ||s(x(t), t) - grad log q_0t(x(t) | x(0))||_2,  grad log q_0t = -z / std(t)

Points x(t) = a(t) x0 + std(t) z are drawn from a sampler of x0. Each value comes with its
standard error over the n points, so a curve can be read with error bars.

The two helpers every per-t curve of the package is built from live here: `time_grid` (log or
uniform t grids) and `per_t_curve` (draw n points x ~ q_t at each t, reduce a per-point value to
its mean and standard error). With ``generator=None`` randomness comes from torch's global RNG,
as everywhere in scorefpe; pass a seeded torch.Generator for reproducible curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch

from scorefpe._util import parse_choice
from scorefpe.operators import ResidualMethod, ScoreFn, _dim, _flat, fp_residual
from scorefpe.sde import SDE

Tensor = torch.Tensor
X0Sampler = Callable[[int, "torch.Generator | None"], Tensor]
# Per-point values at one t from the points x (B, ...), their times t (B,) and the noise z of
# x = a(t) x0 + std(t) z: a tensor (B,).
PointValues = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Curve:
    """A quantity over a grid of t: mean and standard error of the mean, each of shape (T,)."""

    name: str
    t: Tensor
    mean: Tensor
    se: Tensor

    def as_rows(self) -> list[dict[str, float]]:
        return [
            {"t": float(t), "mean": float(m), "se": float(s)}
            for t, m, s in zip(self.t, self.mean, self.se)
        ]


def perturbed_points(
    sde: SDE,
    sample_x0: X0Sampler,
    t: float,
    n: int,
    generator: torch.Generator | None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """n points x ~ q_t: x0 from ``sample_x0`` (cast to ``dtype`` when given), then
    x = a(t) x0 + std(t) z. Returns (x, t as a (n,) tensor, z)."""
    x0 = sample_x0(n, generator)
    if dtype is not None:
        x0 = x0.to(dtype)
    tt = torch.full((n,), float(t), dtype=x0.dtype, device=x0.device)
    x, z = sde.perturb(x0, tt, generator)
    return x, tt, z


def per_t_curve(
    name: str,
    sde: SDE,
    sample_x0: X0Sampler,
    t_grid: Tensor,
    values: PointValues,
    *,
    n_points: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Curve:
    """At each t of ``t_grid``: draw ``n_points`` fresh points x ~ q_t (`perturbed_points`),
    evaluate ``values(x, t, z)`` (n_points,) and keep its mean and standard error
    sd / sqrt(n_points) (n - 1 in the variance). Cost: that of ``values`` once per t."""
    means, ses = [], []
    for t in t_grid.tolist():
        x, tt, z = perturbed_points(sde, sample_x0, t, n_points, generator, dtype)
        per = values(x, tt, z)
        means.append(per.mean())
        ses.append(per.std() / math.sqrt(n_points))
    return Curve(name, t_grid.clone(), torch.stack(means), torch.stack(ses))


def fp_residual_curve(
    score_fn: ScoreFn,
    sde: SDE,
    sample_x0: X0Sampler,
    t_grid: Tensor,
    *,
    n_points: int = 256,
    method: ResidualMethod | str = ResidualMethod.EXACT,
    n_probes: int = 1,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
) -> Curve:
    """r_FP(t) = 1/D E||eps||^2 at each t of ``t_grid`` from ``n_points`` perturbed samples.

    ``t_min``: the smallest time the estimated d_t s stencil may evaluate the model at; None
    means the grid's smallest t, so the stencil is one-sided there and never reaches t <= 0
    (where an eps-parameterised VP network divides by std = 0).

    Exact mode: exact residual per point. Estimated mode: E||eps||^2 from the product of two
    independent residual estimates <eps_1, eps_2>, which is unbiased (the square of a single
    Hutchinson estimate is biased up by its variance). Cost per t: that of ``fp_residual`` on
    n_points (twice when estimated).
    """
    if t_min is None:
        t_min = float(t_grid.min())
    kw = dict(method=method, n_probes=n_probes, generator=generator, t_min=t_min)
    exact = ResidualMethod(method) is ResidualMethod.EXACT

    def values(x: Tensor, tt: Tensor, _z: Tensor) -> Tensor:
        e1 = _flat(fp_residual(score_fn, sde, x, tt, **kw))
        if exact:
            return e1.pow(2).sum(-1) / _dim(x)
        e2 = _flat(fp_residual(score_fn, sde, x, tt, **kw))
        return (e1 * e2).sum(-1) / _dim(x)

    return per_t_curve("r_FP", sde, sample_x0, t_grid, values, n_points=n_points,
                       generator=generator)


@torch.no_grad()
def dsm_residual_curve(
    score_fn: ScoreFn,
    sde: SDE,
    sample_x0: X0Sampler,
    t_grid: Tensor,
    *,
    n_points: int = 256,
    generator: torch.Generator | None = None,
) -> Curve:
    """r_DSM(t) = 1/D E||s(x(t), t) + z / std(t)||_2 at each t (FP-Diffusion's unsquared form).

    Cost: one score evaluation on n_points per t. No derivatives.
    """

    def values(x: Tensor, tt: Tensor, z: Tensor) -> Tensor:
        target = -_flat(z) / sde.marginal_std(tt)[:, None]
        return (_flat(score_fn(x, tt)) - target).norm(dim=-1) / _dim(x)

    return per_t_curve("r_DSM", sde, sample_x0, t_grid, values, n_points=n_points,
                       generator=generator)


class Spacing(Enum):
    """How the times of a `time_grid` are spaced."""

    LOG = "log"
    UNIFORM = "uniform"


def time_grid(
    t_min: float,
    t_max: float,
    n: int,
    spacing: Spacing | str = Spacing.LOG,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """n times from t_min to t_max, both included: log-spaced (equal ratios; for curves over
    noise levels) or uniform (for time averages over U[t_min, T]).

    Raises:
        ValueError: not 0 < t_min < t_max, n not an integer >= 2, unknown spacing.
    """
    kind = parse_choice(Spacing, spacing, "t grid spacing")
    if not (0 < t_min < t_max) or isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(
            f"{kind.value} grid needs 0 < t_min < t_max and n >= 2; got {t_min}, {t_max}, {n}")
    if kind is Spacing.UNIFORM:
        return torch.linspace(t_min, t_max, n, dtype=dtype)
    grid = torch.logspace(math.log10(t_min), math.log10(t_max), n, dtype=dtype)
    # 10 ** log10(t) is not always t in floating point: pin the ends to the values asked for.
    grid[0], grid[-1] = t_min, t_max
    return grid


def log_t_grid(t_min: float, t_max: float, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """n log-spaced times from t_min to t_max inclusive: `time_grid` with Spacing.LOG."""
    return time_grid(t_min, t_max, n, Spacing.LOG, dtype)
