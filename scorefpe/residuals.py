"""Per-time residual curves r_FP(t) and r_DSM(t) over a grid of t (2026 paper eq. 12; FP-Diffusion Fig. 6).

    r_FP(t)  = 1/D E_{x ~ q_t} ||eps[s](x, t)||_2^2        (2026 paper; FP-Diffusion plots the unsquared norm)
    r_DSM(t) = 1/D E ||s(x(t), t) - grad log q_0t(x(t) | x(0))||_2,  grad log q_0t = -z / std(t)

Points x(t) = a(t) x0 + std(t) z are drawn from a sampler of x0. Each value comes with its
standard error over the n points, so a curve can be read with error bars.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from scorefpe.operators import ResidualMethod, ScoreFn, _dim, _flat, fp_residual
from scorefpe.sde import SDE

Tensor = torch.Tensor
X0Sampler = Callable[[int, torch.Generator], Tensor]


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


def _points(sde: SDE, sample_x0: X0Sampler, t: float, n: int, g: torch.Generator):
    x0 = sample_x0(n, g)
    tt = torch.full((n,), float(t), dtype=x0.dtype, device=x0.device)
    x, z = sde.perturb(x0, tt, g)
    return x, tt, z


def fp_residual_curve(
    score_fn: ScoreFn,
    sde: SDE,
    sample_x0: X0Sampler,
    t_grid: Tensor,
    *,
    n_points: int = 256,
    method: ResidualMethod | str = ResidualMethod.EXACT,
    n_probes: int = 1,
    t_min: float = 0.0,
    generator: torch.Generator | None = None,
) -> Curve:
    """r_FP(t) = 1/D E||eps||^2 at each t of ``t_grid`` from ``n_points`` perturbed samples.

    Exact mode: exact residual per point. Estimated mode: E||eps||^2 from the product of two
    independent residual estimates <eps_1, eps_2>, which is unbiased (the square of a single
    Hutchinson estimate is biased up by its variance). Cost per t: that of ``fp_residual`` on
    n_points (twice when estimated).
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    means, ses = [], []
    for t in t_grid.tolist():
        x, tt, _ = _points(sde, sample_x0, t, n_points, g)
        d = _dim(x)
        kw = dict(method=method, n_probes=n_probes, generator=g, t_min=t_min)
        e1 = _flat(fp_residual(score_fn, sde, x, tt, **kw))
        if ResidualMethod(method) is ResidualMethod.EXACT:
            per = e1.pow(2).sum(-1) / d
        else:
            e2 = _flat(fp_residual(score_fn, sde, x, tt, **kw))
            per = (e1 * e2).sum(-1) / d
        means.append(per.mean())
        ses.append(per.std() / n_points**0.5)
    return Curve("r_FP", t_grid.clone(), torch.stack(means), torch.stack(ses))


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
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    means, ses = [], []
    for t in t_grid.tolist():
        x, tt, z = _points(sde, sample_x0, t, n_points, g)
        std = sde.marginal_std(tt)
        target = -_flat(z) / std[:, None]
        per = (_flat(score_fn(x, tt)) - target).norm(dim=-1) / _dim(x)
        means.append(per.mean())
        ses.append(per.std() / n_points**0.5)
    return Curve("r_DSM", t_grid.clone(), torch.stack(means), torch.stack(ses))


def log_t_grid(t_min: float, t_max: float, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """n log-spaced times from t_min to t_max inclusive."""
    if not (0 < t_min < t_max) or n < 2:
        raise ValueError(f"log grid needs 0 < t_min < t_max and n >= 2; got {t_min}, {t_max}, {n}")
    return torch.logspace(torch.log10(torch.tensor(t_min)), torch.log10(torch.tensor(t_max)), n, dtype=dtype)
