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

from typing import Callable

import torch

from scorefpe import operators
from scorefpe.operators import DivergenceMethod
from scorefpe.residuals import Curve, per_t_curve
from scorefpe.sde import SDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
X0Sampler = Callable[[int, torch.Generator], Tensor]

__all__ = ["curl_mse_curve", "curl_sq", "time_average"]


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
    """Trapezoid average of curve.mean over its t grid: 1/(t_N - t_0) int mean(t) dt."""
    t = curve.t.to(torch.float64)
    m = curve.mean.to(torch.float64)
    if t.numel() < 2:
        raise ValueError("time_average needs at least two grid points")
    return float(torch.trapezoid(m, t) / (t[-1] - t[0]))
