"""`check_model`: how far a score model is from the score FPE and from a gradient field, per t.

At each t of the grid, n_points points x(t) = a(t) x0 + std(t) z are drawn (x0 from the given
sampler, z ~ N(0, I)), and per point:

    r_FP   = 1/D ||eps||^2,   eps = d_t s - grad_x L[s]          (operators.fp_residual)
    DSM    = 1/D ||std(t) s + z||^2
    Asym   = ||J - J^T||_F^2 / 2 = tr(J J^T) - tr(J J)            (operators.jacobian_asymmetry_sq)
    NAsym  = Asym / (2 ||J||_F^2)  in [0, 1]                      (QCSBM, Chao et al. 2023)
    div    = tr J                                                 (operators.divergence)
    ||J||_F^2 / D, ||s||^2 / D, and 1/D ||s - s_true||^2 when a closed-form score is given.

Each reported value is the mean over points with SE = sd / sqrt(n_points) (CI = mean +- 1.96 SE).

Modes. exact (default when D <= 16): every derivative exact (D JVPs per quantity), so the SE is
the spread over points only. estimated (larger D): Hutchinson probes (K = n_probes per point and
quantity, fresh for every point, so the SE over points includes the probe noise); d_t s is
forward-mode AD in both modes (FP-Diffusion's finite-difference stencil on request: it is biased
at small t, see `check_model`'s time_method). The square of one residual estimate is biased upwards by
its variance (E||eps_hat||^2 = ||eps||^2 + tr Cov), so r_FP uses two independent estimates and
the unbiased product <eps_hat_1, eps_hat_2>/D (it can be negative where r_FP ~ 0). The divergence
spread uses the covariance of two independent divergence estimates over points for the same
reason. NAsym is a per-point ratio of two independent unbiased estimates: its bias is of the
order of the relative variance of the ||J||_F^2 estimate, about 2 / (K D) for a Jacobian with
spread-out singular values (small at D = 784).

Cost per point and t (F = one model call, JVP ~ 2-3 F): exact about 4 D JVPs + a backward;
estimated about 2 x (K JVPs + backward + 3 F) for r_FP, 2K JVPs for div, K for ||J||_F^2 and 2K
for Asym.

No derivative is taken here: all go through `scorefpe.operators`.
"""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import Any, Callable

import torch

from scorefpe import operators as ops
from scorefpe.modelcheck.loading import model_dtype, probe_model
from scorefpe.modelcheck.report import ModelReport, Stat
from scorefpe.residuals import Spacing, time_grid
from scorefpe.sde import SDE, bcast

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
Sampler = Callable[[int, "torch.Generator | None"], Tensor]

__all__ = ["CheckMode", "EXACT_MAX_DIM", "check_model", "parse_t_grid", "mean_se"]

EXACT_MAX_DIM = 16


class CheckMode(str, Enum):
    """auto: exact where D <= EXACT_MAX_DIM, estimated otherwise."""

    AUTO = "auto"
    EXACT = "exact"
    ESTIMATED = "estimated"


def parse_t_grid(spec: str, T: float = 1.0) -> tuple[float, ...]:
    """Parse ``start:stop:count`` (log-spaced, both ends included) or a comma list of times.

    Raises:
        ValueError: unparsable spec, count < 1, times outside (0, T], start >= stop.
    """
    s = str(spec).strip()
    bad = ValueError(
        f"--t-grid {spec!r}: expected start:stop:count (e.g. 1e-3:1:12) or a comma list of times"
    )
    if ":" in s:
        parts = s.split(":")
        if len(parts) != 3:
            raise bad
        try:
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise bad from None
        if n < 1:
            raise ValueError(f"--t-grid {spec!r}: count must be >= 1")
        if n == 1:
            grid: tuple[float, ...] = (lo,)
        elif not (0 < lo < hi):
            raise ValueError(f"--t-grid {spec!r}: need 0 < start < stop")
        else:
            grid = tuple(time_grid(lo, hi, n, Spacing.LOG).tolist())
    else:
        try:
            grid = tuple(sorted(float(v) for v in s.split(",") if v.strip()))
        except ValueError:
            raise bad from None
        if not grid:
            raise bad
    if any(not (0 < t <= T) or not math.isfinite(t) for t in grid):
        raise ValueError(f"--t-grid {spec!r}: every t must lie in (0, T] = (0, {T}]")
    return grid


def mean_se(values: Tensor) -> Stat:
    """Mean and standard error sd / sqrt(n) (n - 1 in the variance) of a 1-D tensor of values."""
    v = values.detach().double().reshape(-1)
    n = v.numel()
    if n == 0:
        return Stat(math.nan, math.nan)
    m = float(v.mean())
    se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return Stat(m, se)


def _spread(d1: Tensor, d2: Tensor, generator: torch.Generator | None, n_boot: int = 200) -> Stat:
    """sd over points from two independent estimates: sqrt(max(cov(d1, d2), 0)); SE by bootstrap."""
    a, b = d1.double(), d2.double()
    n = a.numel()

    def sd(i: Tensor | None) -> float:
        x, y = (a, b) if i is None else (a[i], b[i])
        c = float(((x - x.mean()) * (y - y.mean())).sum() / max(1, n - 1))
        return math.sqrt(max(c, 0.0))

    est = sd(None)
    if n < 3:
        return Stat(est, math.nan)
    idx = torch.randint(0, n, (n_boot, n), generator=generator)
    boots = torch.tensor([sd(i) for i in idx], dtype=torch.float64)
    return Stat(est, float(boots.std()))


def _per_dim_sq(v: Tensor) -> Tensor:
    f = v.reshape(v.shape[0], -1)
    return f.pow(2).sum(-1) / f.shape[1]


def check_model(
    score_fn: ScoreFn,
    sde: SDE,
    sample_x0: Sampler,
    *,
    t_grid: tuple[float, ...] | list[float],
    n_points: int = 64,
    n_probes: int = 4,
    generator: torch.Generator | None = None,
    mode: CheckMode | str = CheckMode.AUTO,
    true_score_fn: ScoreFn | None = None,
    compute_dsm: bool = True,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    time_method: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> ModelReport:
    """Score-FPE and conservativity report of ``score_fn`` under ``sde`` on a grid of t.

    Args:
        score_fn: s(x, t), x (B, ...) and t (B,) -> shaped like x (convert eps/x0 models with
            `scorefpe.modelcheck.to_score_fn`). Must treat samples independently.
        sde: the forward SDE (supplies f, g, a(t), std(t)).
        sample_x0: ``sample_x0(n, generator) -> (n, ...)`` draws of x(0) (data, or the model's
            own samples); cast to ``dtype``/``device`` here.
        dtype: evaluation dtype. None (default, the CLI's ``--dtype auto``): the dtype of the
            model's floating-point parameters, looking through `to_score_fn` wrappers (any
            callable that sets ``__wrapped__``), else float64 for a parameter-free callable.
        t_grid: times in (0, T], increasing. The finite-difference d_t s of the estimated mode
            stays in [min(t_grid), T].
        n_points: points per t (>= 2 for a standard error). n_probes: Hutchinson probes per
            point and quantity (estimated mode).
        generator: all randomness (x0, z, probes, bootstrap).
        mode: 'auto' | 'exact' | 'estimated' (see the module docstring).
        true_score_fn: closed-form score for the distance column (optional).
        compute_dsm: report the DSM loss (meaningful when x0 is data).
        time_method: d_t s method of the residual ('exact' forward-mode, 'central',
            'nonuniform' (FP-Diffusion's stencil)); default: exact in both modes. A stencil with
            h = 1e-3 is biased where s changes on a scale of h in t: at the grid's lowest t it
            must go one-sided (s at t + h, t + 2h), and a trained MNIST score's r_FP came out 2x
            too small at t = 1e-3 and 1,000x at 1e-5 (docs/results/table1_cpu.md). In float32 a
            stencil also adds round-off ~ 1e-7 |s| / h; 'exact' has none.
        batch_size: points per operator call. progress: called as progress(done, total) in
            points. meta: extra entries for the report's meta (model name, data, ...).

    Returns:
        ModelReport with per-t Stats (mean, se) and meta (mode, dim, probe count, seconds).

    Cost: see the module docstring; D = 784 in estimated mode with a small U-Net takes minutes
    on a laptop CPU at the defaults.

    Raises:
        ValueError: bad arguments, or a model that fails the probe call (wrong shape, dtype,
            device, NaN output, or an exception), or NaN output at some t.
    """
    t0 = time.perf_counter()
    grid = tuple(float(t) for t in t_grid)
    if not grid or any(not (0 < t <= sde.T) for t in grid) or list(grid) != sorted(grid):
        raise ValueError(f"t_grid must be increasing times in (0, T] = (0, {sde.T}], got {grid}")
    for name, v, lo in (("n_points", n_points, 2), ("n_probes", n_probes, 1), ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    try:
        m = CheckMode(mode)
    except ValueError:
        raise ValueError(
            f"unknown mode {mode!r}; choose one of {[c.value for c in CheckMode]}"
        ) from None

    if dtype is None:
        dtype = model_dtype(score_fn)
    x_probe = sample_x0(min(4, n_points), generator).to(dtype=dtype, device=device)
    if x_probe.dim() < 2:
        raise ValueError(f"sample_x0 must return (n, ...) with a feature axis, got {tuple(x_probe.shape)}")
    dim = int(math.prod(x_probe.shape[1:]))
    if m is CheckMode.AUTO:
        m = CheckMode.EXACT if dim <= EXACT_MAX_DIM else CheckMode.ESTIMATED
    exact = m is CheckMode.EXACT
    for tp in {grid[0], grid[-1]}:
        tt = torch.full((x_probe.shape[0],), tp, dtype=dtype, device=device)
        xp, _ = sde.perturb(x_probe, tt, generator)
        probe_model(score_fn, xp, tt)

    t_lo = grid[0]
    if time_method is None:
        tm = ops.TimeMethod.EXACT
    else:
        try:
            tm = ops.TimeMethod(time_method)
        except ValueError:
            raise ValueError(
                f"unknown time method {time_method!r}; choose one of "
                f"{[m.value for m in ops.TimeMethod]}"
            ) from None
    t_desc = {
        ops.TimeMethod.EXACT: "forward-mode d_t s",
        ops.TimeMethod.CENTRAL: "d_t s by the central stencil (h = 1e-3)",
        ops.TimeMethod.NONUNIFORM: "d_t s by the nonuniform (1e-3, 5e-4) stencil",
    }[tm]
    div_m = ops.DivergenceMethod.EXACT if exact else ops.DivergenceMethod.HUTCHINSON
    res_m = ops.ResidualMethod.EXACT if exact else ops.ResidualMethod.ESTIMATED
    kw = dict(method=div_m, n_probes=n_probes, generator=generator)
    total = len(grid) * n_points
    done = 0
    names = ["r_fp", "asym", "nasym", "div_mean", "jac_fro_sq", "score_sq"]
    if compute_dsm:
        names.append("dsm")
    if true_score_fn is not None:
        names.append("true_dist")
    stats: dict[str, list[Stat]] = {q: [] for q in names + ["div_spread"]}
    for t in grid:
        per: dict[str, list[Tensor]] = {q: [] for q in names + ["div1", "div2"]}
        x0_all = sample_x0(n_points, generator).to(dtype=dtype, device=device)
        for lo in range(0, n_points, batch_size):
            x0 = x0_all[lo: lo + batch_size]
            tt = torch.full((x0.shape[0],), t, dtype=dtype, device=device)
            x, z = sde.perturb(x0, tt, generator)
            with torch.no_grad():
                s = score_fn(x, tt)
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"model output contains NaN or infinite values at t = {t:.4g}")
            per["score_sq"].append(_per_dim_sq(s))
            if compute_dsm:
                per["dsm"].append(_per_dim_sq(bcast(sde.marginal_std(tt), s) * s + z))
            if true_score_fn is not None:
                with torch.no_grad():
                    s_true = true_score_fn(x, tt).to(s)
                per["true_dist"].append(_per_dim_sq(s - s_true))
            rkw = dict(method=res_m, n_probes=n_probes, generator=generator, t_min=t_lo,
                       time_method=tm)
            e1 = ops.fp_residual(score_fn, sde, x, tt, **rkw).reshape(x.shape[0], -1)
            if exact:
                per["r_fp"].append(e1.pow(2).sum(-1) / dim)
                d1 = ops.divergence(score_fn, x, tt, **kw)
                d2 = d1
            else:
                e2 = ops.fp_residual(score_fn, sde, x, tt, **rkw).reshape(x.shape[0], -1)
                per["r_fp"].append((e1 * e2).sum(-1) / dim)
                d1 = ops.divergence(score_fn, x, tt, **kw)
                d2 = ops.divergence(score_fn, x, tt, **kw)
            per["div1"].append(d1)
            per["div2"].append(d2)
            per["div_mean"].append(0.5 * (d1 + d2))
            fro = ops.jacobian_frobenius_sq(score_fn, x, tt, **kw)
            asym = 0.5 * ops.jacobian_asymmetry_sq(score_fn, x, tt, **kw)
            per["jac_fro_sq"].append(fro / dim)
            per["asym"].append(asym)
            per["nasym"].append(torch.where(fro > 0, asym / (2 * fro), torch.zeros_like(fro)))
            done += x0.shape[0]
            if progress is not None:
                progress(done, total)
        for q in names:
            stats[q].append(mean_se(torch.cat(per[q])))
        stats["div_spread"].append(_spread(torch.cat(per["div1"]), torch.cat(per["div2"]), generator))

    seconds = time.perf_counter() - t0
    if exact:
        mode_txt = f"exact (D JVPs per quantity, {t_desc})"
        evals = f"exact: {dim} basis directions per point and quantity"
    else:
        mode_txt = (
            f"estimated (Hutchinson, {n_probes} Gaussian probes per point and quantity; "
            f"{t_desc}; r_FP = <eps_1, eps_2>/D of two independent estimates)"
        )
        evals = f"{n_probes} probes x (2 r_FP + 2 div + 1 ||J||_F + 2 Asym) per point"
    info: dict[str, Any] = dict(meta or {})
    info.update(
        sde=info.get("sde", type(sde).__name__),
        dim=dim,
        shape=list(x_probe.shape[1:]),
        dtype=str(dtype).replace("torch.", ""),
        mode=mode_txt,
        mode_short="exact" if exact else f"estimated, K = {n_probes}",
        exact=exact,
        n_points=n_points,
        n_probes=n_probes if not exact else 0,
        probe_evals=evals,
        t_grid=list(grid),
        seconds=round(seconds, 2),
    )
    notes = list(info.get("notes", []))
    if not exact:
        notes.append(
            "NAsym is a per-point ratio of independent estimates; its bias is about the relative "
            "variance of the ||J||_F^2 estimate (~2/(K D))"
        )
    info["notes"] = notes
    return ModelReport(grid, {q: tuple(v) for q, v in stats.items()}, info)
