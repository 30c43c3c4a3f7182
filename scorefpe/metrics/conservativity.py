"""Conservativity of a score model: the curl MSE over t (FP-Diffusion Sec. 6.2, Figure 3).

A true score is a gradient, so its Jacobian J = ds/dx is symmetric. The squared curl

    curl^2(x, t) = sum_{i<j} (d_i s_j - d_j s_i)^2 = 1/2 ||J - J^T||_F^2

is (d_1 s_2 - d_2 s_1)^2 in 2-D, the squared norm of the usual curl vector in 3-D, and the
natural extension in any D (identically zero in 1-D: every 1-D field is a gradient).
curl MSE(t) = E_{x ~ q_t} curl^2(x, t), the mean squared deviation from the true score's curl
(which is zero); x(t) = a(t) x0 + std(t) z with x0 drawn from the data. FP-Diffusion's
time-averaged values on their 2-D GMM: 2.22 (DSM), 1.89 (alpha = 1e-3), 0.60 (alpha = 1e-2),
3.73e-13 (closed form). ||J - J^T||_F^2 comes from `scorefpe.operators.jacobian_asymmetry_sq`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from scorefpe import operators
from scorefpe.operators import DivergenceMethod
from scorefpe.residuals import Curve, log_t_grid, per_t_curve
from scorefpe.sde import SDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
X0Sampler = Callable[[int, torch.Generator], Tensor]

__all__ = [
    "TimeMean",
    "curl_mse_convergence",
    "curl_mse_curve",
    "curl_sq",
    "time_average",
    "uniform_time_mean",
    "uniform_time_weights",
]


def curl_sq(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    *,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """curl^2 = 1/2 ||J - J^T||_F^2 per point, shape (B,). Exact: D JVPs (memory B D^2);
    hutchinson: 2 n_probes JVPs, unbiased (operators.jacobian_asymmetry_sq).

    Raises:
        ValueError: as `operators.jacobian_asymmetry_sq`.
    """
    return 0.5 * operators.jacobian_asymmetry_sq(
        score_fn, x, t, method=method, n_probes=n_probes, generator=generator)


def curl_mse_curve(
    score_fn: ScoreFn,
    sde: SDE,
    sample_x0: X0Sampler,
    t_grid: Tensor,
    *,
    n_points: int = 256,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> Curve:
    """curl MSE(t) = E_{x ~ q_t} curl^2(x, t) at each t of ``t_grid``, with its standard error.

    n_points fresh perturbed samples per t (x0 from ``sample_x0``, cast to ``dtype`` when given).
    Cost per t: D JVPs on n_points (exact). The standard error is over points; with the exact
    method it is the only error besides round-off.

    Raises:
        ValueError: n_points < 2, or as `curl_sq`.
    """
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")

    def values(x: Tensor, tt: Tensor, _z: Tensor) -> Tensor:
        per = curl_sq(score_fn, x, tt, method=method, n_probes=n_probes, generator=generator)
        return per.to(torch.float64)

    return per_t_curve("curl_mse", sde, sample_x0, t_grid, values, n_points=n_points,
                       generator=generator, dtype=dtype)


def time_average(curve: Curve) -> float:
    """Trapezoid in t of curve.mean over its grid: 1/(t_N - t_0) int mean(t) dt.

    On a uniform t grid this does not resolve a curve concentrated near t_0 (the curl MSE falls
    by 6-10 orders from t_min to T): the first node alone then carries h/2 of the weight and the
    value scales like 1/n_t. Use `uniform_time_mean` on a `log_t_grid` for the time mean."""
    t = curve.t.to(torch.float64)
    m = curve.mean.to(torch.float64)
    if t.numel() < 2:
        raise ValueError("time_average needs at least two grid points")
    return float(torch.trapezoid(m, t) / (t[-1] - t[0]))



def uniform_time_weights(t: Tensor) -> Tensor:
    """Quadrature weights w_i with sum_i w_i m(t_i) ~ 1/(t_N - t_0) int_{t_0}^{t_N} m(t) dt.

    The trapezoid rule in u = log t applied to int m(e^u) e^u du (the same integral, dt = t du):
    w_i = t_i (u_{i+1} - u_{i-1}) / 2 / (t_N - t_0) (one-sided at the ends). Any increasing
    positive grid; on a log-spaced grid its error is O(du^2) for m(e^u) e^u smooth in u, so it
    resolves a curve concentrated near t_0 with as few nodes per decade as elsewhere. Exact for
    m(t) = c / t. t: (N,) with N >= 2, strictly increasing, t_0 > 0. Returns (N,) float64.
    """
    t = t.to(torch.float64)
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"need a 1-D grid of at least two times, got shape {tuple(t.shape)}")
    if not (bool((t > 0).all()) and bool((t[1:] > t[:-1]).all())):
        raise ValueError("the t grid must be positive and strictly increasing")
    du = t.log().diff()
    w = torch.zeros_like(t)
    w[:-1] += du / 2
    w[1:] += du / 2
    return w * t / (t[-1] - t[0])


@dataclass(frozen=True)
class TimeMean:
    """E_{t ~ U[t_0, t_N]} m(t) by `uniform_time_weights`: value, its Monte Carlo standard error
    sqrt(sum_i w_i^2 se_i^2) (the points at different t are independent draws), n_t nodes."""

    value: float
    se: float
    n_t: int


def uniform_time_mean(curve: Curve) -> TimeMean:
    """The mean of curve.mean over t ~ U[t_0, t_N] (log-t trapezoid, `uniform_time_weights`),
    with the standard error propagated from curve.se. The quadrature error is not in se: check
    it by refining the grid (`curl_mse_convergence`)."""
    w = uniform_time_weights(curve.t)
    m = curve.mean.to(torch.float64)
    se = curve.se.to(torch.float64)
    return TimeMean(float((w * m).sum()), float((w.pow(2) * se.pow(2)).sum().sqrt()), int(w.numel()))


def curl_mse_convergence(
    score_fn: ScoreFn,
    sde: SDE,
    sample_x0: X0Sampler,
    t_min: float,
    *,
    n_ts: Sequence[int] = (10, 20, 40, 80),
    n_points: int = 200,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[dict[int, TimeMean], Curve]:
    """Time-mean curl MSE, E_{t ~ U[t_min, T]} E_{x ~ q_t} curl^2(x, t), on log-spaced grids of
    each size in ``n_ts`` (the grid-convergence check), and the curve on the finest grid.

    Each grid draws its own points (n_points per t, generator seeded by seed + n_t), so the
    differences between grids are quadrature error plus Monte Carlo noise (se of each value).
    Cost: sum(n_ts) curl evaluations of n_points (D JVPs each).
    """
    if not n_ts:
        raise ValueError("n_ts must name at least one grid size")
    out: dict[int, TimeMean] = {}
    finest = None
    for n in sorted(n_ts):
        grid = log_t_grid(t_min, sde.T, n).to(dtype)
        c = curl_mse_curve(score_fn, sde, sample_x0, grid, n_points=n_points,
                           generator=torch.Generator().manual_seed(seed + n))
        c = Curve(c.name, grid.to(torch.float64), c.mean, c.se)
        out[n] = uniform_time_mean(c)
        finest = c
    assert finest is not None
    return out, finest
