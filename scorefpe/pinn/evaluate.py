"""Measure a learned score against a closed-form one: score error over t, r_FP(t), and the
samples of the reverse SDE and the probability-flow ODE (mode weights, sliced Wasserstein).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from scorefpe.sampling.samplers import euler_maruyama, probability_flow_ode
from scorefpe.residuals import Spacing, fp_residual_curve, perturbed_points, time_grid
from scorefpe.sde import SDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
X0Sampler = Callable[[int, torch.Generator], Tensor]


@torch.no_grad()
def score_error_curve(
    score_fn: ScoreFn,
    true_score: ScoreFn,
    sde: SDE,
    sample_x0: X0Sampler,
    t_grid: Tensor,
    *,
    n_points: int = 4096,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """q_t-weighted relative L2 error sqrt(E_{q_t}||s~ - s||^2 / E_{q_t}||s||^2) at each t of
    t_grid, shape (T,). Monte Carlo over n_points samples x ~ q_t (x0 from ``sample_x0``
    perturbed by the SDE): relative standard error about 1/sqrt(n_points) of each mean.
    Cost: one evaluation of both scores on n_points per t."""
    out = []
    for t in t_grid.tolist():
        x, tt, _ = perturbed_points(sde, sample_x0, t, n_points, generator, dtype)
        s_true = true_score(x.double(), tt.double())
        err = (score_fn(x, tt).double() - s_true).pow(2).sum(-1).mean()
        out.append((err / s_true.pow(2).sum(-1).mean()).sqrt())
    return torch.stack(out)


@torch.no_grad()
def log_ratio_error(
    score_fn: ScoreFn,
    true_score: ScoreFn,
    sde: SDE,
    means: Tensor,
    t_grid: Tensor,
    *,
    n_line: int = 8001,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Error of the log-density difference between neighbouring modes that the learned score
    implies, shape (T, K - 1): for each t of t_grid and each pair (mu_k, mu_{k+1}) of ``means``
    (K, D), in their order,
        int_0^1 (s~ - s)(x(u), t) . dx/du du,  x(u) = a(t) (mu_k + u (mu_{k+1} - mu_k)),
    i.e. [log q~_t - log q_t] at a(t) mu_{k+1} minus the same at a(t) mu_k when s~ is a gradient.
    While the modes are apart (gmm2d VE: t < ~0.5) it is the error of log(pi_{k+1} / pi_k),
    so it says at which t a solver gains or loses the mode weights (docs/results/cauchy.md).
    Trapezoid rule on n_line points (exact for a constant error; the initial score's jump
    between the modes, width s^2 / |mu_{k+1} - mu_k|, should span many points).
    Cost: one evaluation of both scores on n_line points per t and pair.
    """
    u = torch.linspace(0.0, 1.0, n_line, dtype=torch.float64)
    out = torch.zeros(len(t_grid), means.shape[0] - 1, dtype=torch.float64)
    for i, t in enumerate(t_grid.tolist()):
        tt = torch.full((n_line,), t, dtype=torch.float64)
        a = sde.mean_coeff(tt)[:, None]
        for k in range(means.shape[0] - 1):
            lo, hi = means[k].double(), means[k + 1].double()
            x = a * (lo + u[:, None] * (hi - lo))
            dl = a * (hi - lo)
            diff = score_fn(x.to(dtype), tt.to(dtype)).double() - true_score(x, tt)
            out[i, k] = torch.trapezoid((diff * dl).sum(-1), u)
    return out


def mode_weights(samples: Tensor, means: Tensor) -> Tensor:
    """Fraction of samples nearest (Euclidean) to each mode mean, shape (K,). samples (N, D),
    means (K, D). For gmm2d this is the fraction nearer (-5,-5) vs (5,5)."""
    d2 = (samples[:, None, :].double() - means[None].double()).pow(2).sum(-1)
    idx = d2.argmin(1)
    return torch.bincount(idx, minlength=means.shape[0]).double() / samples.shape[0]


def sliced_wasserstein(
    a: Tensor, b: Tensor, *, n_proj: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance sqrt(E_theta W_2^2(theta.a, theta.b)) between two equal-size
    samples (N, D), theta uniform on the sphere (n_proj Monte Carlo directions). In 1-D the
    W_2 between empirical measures of equal size is the RMS of the sorted differences.

    Raises:
        ValueError: different sizes or dimensions.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"samples must both be (N, D) of equal shape; got {tuple(a.shape)}, {tuple(b.shape)}")
    theta = torch.randn(a.shape[1], n_proj, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa = (a.double() @ theta).sort(0).values
    pb = (b.double() @ theta).sort(0).values
    return float((pa - pb).pow(2).mean().sqrt())


@dataclass
class EvalResult:
    """All numbers of one evaluation (JSON-ready via `to_dict`)."""

    t_grid: list[float]
    rel_err: list[float]
    r_fp_t: list[float]
    r_fp: list[float]
    r_fp_se: list[float]
    mean_rel_err: float  # average of rel_err over the grid points with t >= 0.05
    samples: dict[str, Any] = field(default_factory=dict)
    density: dict[str, Any] = field(default_factory=dict)
    log_ratio_err: list[list[float]] = field(default_factory=list)  # (T, K - 1) on t_grid; [] without means

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def evaluate_model(
    score_fn: ScoreFn,
    sde: SDE,
    dataset: Any,
    *,
    t_min: float = 1e-3,
    n_t: int = 20,
    n_points: int = 4096,
    n_fp_points: int = 256,
    n_samples: int = 2000,
    em_steps: int = 1000,
    seed: int = 0,
    samplers: tuple[str, ...] = ("em", "ode"),
    n_density: int = 256,
    dtype: torch.dtype = torch.float32,
) -> tuple[EvalResult, dict[str, Tensor]]:
    """Score error on a t grid (log-spaced t_min..0.05 plus n_t uniform points in [0.05, 1]),
    r_FP(t) (exact residual, n_fp_points per t), and ``samplers`` ('em': Euler-Maruyama with
    em_steps steps; 'ode': probability-flow RK45, rtol = atol = 1e-5) with n_samples samples:
    mode weights (nearest mean, for Gaussian mixtures) and the sliced Wasserstein distance to
    as many true samples, with the same distance between two true sample sets as the noise
    floor. With n_density > 0, the model's probability-flow log-density at n_density true
    samples vs the exact log q_{t_min} (scorefpe.sampling.likelihood). Returns (numbers, {sampler name: samples}).

    For Gaussian mixtures also `log_ratio_error` between neighbouring means on the same t grid.

    Cost: dominated by em_steps score evaluations on n_samples and the residual curve.
    """
    g = torch.Generator().manual_seed(seed)
    low = time_grid(t_min, 0.05, 6, Spacing.LOG)[:-1]
    high = time_grid(0.05, 1.0, n_t, Spacing.UNIFORM)
    grid = torch.cat([low, high])
    true = dataset.score_fn(sde)
    rel = score_error_curve(score_fn, true, sde, dataset.sample, grid, n_points=n_points, generator=g, dtype=dtype)
    fp_grid = torch.cat([low[::2], high[::2]])
    curve = fp_residual_curve(
        score_fn, sde, lambda n, gg: dataset.sample(n, gg).to(dtype), fp_grid.to(dtype),
        n_points=n_fp_points, t_min=t_min, generator=g,
    )
    res = EvalResult(
        t_grid=grid.tolist(), rel_err=rel.tolist(), r_fp_t=fp_grid.tolist(),
        r_fp=curve.mean.double().tolist(), r_fp_se=curve.se.double().tolist(),
        mean_rel_err=float(rel[len(low):].mean()),
    )
    truth = dataset.truth
    ref = dataset.sample(n_samples, g)
    ref2 = dataset.sample(n_samples, g)
    means = getattr(truth, "means", None)
    res.samples["true"] = {"sw": sliced_wasserstein(ref, ref2, generator=torch.Generator().manual_seed(1))}
    if means is not None:
        res.log_ratio_err = log_ratio_error(score_fn, true, sde, means, grid, dtype=dtype).tolist()
        res.samples["true"]["mode_weights"] = mode_weights(ref2, means).tolist()
        res.samples["target_mode_weights"] = truth.weights.tolist()
    out: dict[str, Tensor] = {"true": ref2.float()}
    with torch.no_grad():
        for name in samplers:
            gs = torch.Generator().manual_seed(seed + 7)
            if name == "em":
                r = euler_maruyama(score_fn, sde, (n_samples, dataset.dim), n_steps=em_steps, t_min=t_min, generator=gs, dtype=dtype)
            elif name == "ode":
                r = probability_flow_ode(score_fn, sde, (n_samples, dataset.dim), t_min=t_min, generator=gs, dtype=dtype)
            else:
                raise ValueError(f"unknown sampler {name!r}; choose 'em' or 'ode'")
            x = r.samples
            row: dict[str, Any] = {"nfe": r.nfe, "finite": bool(torch.isfinite(x).all())}
            xf = torch.nan_to_num(x.double(), nan=1e6, posinf=1e6, neginf=-1e6)
            row["sw"] = sliced_wasserstein(xf, ref, generator=torch.Generator().manual_seed(1))
            if means is not None:
                mw = mode_weights(xf, means)
                row["mode_weights"] = mw.tolist()
                row["mode_weight_max_dev"] = float((mw - truth.weights.double()).abs().max())
            res.samples[name] = row
            out[name] = x
    if n_density > 0:
        res.density = _density(score_fn, sde, dataset, t_min, n_density, g, dtype)
    return res, out


def density_grid(dataset: Any, n: int) -> Tensor:
    """Evaluation points for the density figure: n points on a line (D = 1) or an n x n grid
    (D = 2) covering the data (+- 3 std around its range), float64, shape (n^D, D)."""
    ref = dataset.sample(4096, torch.Generator().manual_seed(123))
    lo = ref.min(0).values - 0.5 * ref.std(0)
    hi = ref.max(0).values + 0.5 * ref.std(0)
    axes = [torch.linspace(float(lo[i]), float(hi[i]), n, dtype=torch.float64) for i in range(dataset.dim)]
    if dataset.dim == 1:
        return axes[0][:, None]
    if dataset.dim == 2:
        gx, gy = torch.meshgrid(axes[0], axes[1], indexing="xy")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    raise ValueError(f"density grid needs D in (1, 2), got {dataset.dim}")


def _density(score_fn: ScoreFn, sde: SDE, dataset: Any, t_min: float, n: int, g: torch.Generator,
             dtype: torch.dtype) -> dict[str, Any]:
    """log p_{t_min} of the model (probability-flow ODE, exact divergence) at n true samples vs
    the exact log q_{t_min}: mean of each (NLL = -mean) and mean |difference|."""
    from scorefpe.sampling.likelihood import probability_flow_likelihood

    x = dataset.sample(n, g)
    t = torch.full((n,), t_min, dtype=torch.float64)
    true_lp = dataset.log_prob(x, t, sde)
    r = probability_flow_likelihood(score_fn, sde, x.to(dtype), t_min=t_min)
    lp = r.log_prob.double()
    return {
        "n": n, "nfe": r.nfe, "model_mean_log_prob": float(lp.mean()),
        "true_mean_log_prob": float(true_lp.mean()),
        "mean_abs_diff": float((lp - true_lp).abs().mean()),
        "se_mean_log_prob": float(lp.std() / math.sqrt(n)),
    }
