"""The `scorefpe check --dataset NAME` battery: every operator held against a closed form.

Each check returns a CheckResult with the measured figure and the bound it must meet. Bounds
come from the method: float64 round-off for exact identities, a z-score for unbiasedness
(Bonferroni-corrected over the points tested), a standard-error band for variances, the
promised order +- a tolerance for finite-difference convergence slopes.
All computations are float64 and seeded; the battery is deterministic on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from scorefpe.data.synthetic import SyntheticDataset, get_dataset
from scorefpe.operators import (
    Stencil,
    apply_stencil,
    backward_stencil,
    central_stencil,
    divergence,
    forward_stencil,
    fp_operator,
    fp_residual,
    jacobian,
    jacobian_asymmetry_sq,
    jacobian_frobenius_sq,
    nonuniform_stencil,
    scalar_fp_residual,
    time_derivative,
)
from scorefpe.residuals import fp_residual_curve, log_t_grid
from scorefpe.sde import SDE
from scorefpe.validation.result import CheckResult

Tensor = torch.Tensor
DT = torch.float64

# Round-off bound for identities that hold exactly in exact arithmetic, relative to the size of
# the terms: float64 eps 2.2e-16 times the conditioning of the mixture terms (observed <= 1e-12).
ROUNDOFF_REL = 1e-9
# |z| bound for unbiasedness tests: with <= 512 comparisons, P(max |z| > 5) < 3e-4 for a correct
# estimator; a biased one (bias >= 5 standard errors) fails.
Z_BOUND = 5.0
SLOPE_TOL = 0.25


@dataclass
class BatteryOutput:
    """Results plus the raw series the figure is drawn from."""

    results: list[CheckResult]
    series: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check met its bound."""
        return all(r.passed for r in self.results)


def perturbed_score(ds: SyntheticDataset, sde: SDE, amplitude: float = 0.3) -> Callable:
    """A score with a known non-zero residual and curl: s + amplitude sin(2 pi t) A x,
    A = [[1/2, 1], [-1, 1/2]] (a symmetric and an antisymmetric part; 1/2 in 1-D)."""
    d = ds.dim
    a = torch.full((1, 1), 0.5, dtype=DT) if d == 1 else 0.5 * torch.eye(d, dtype=DT)
    if d >= 2:
        a[0, 1] += 1.0
        a[1, 0] -= 1.0
    base = ds.score_fn(sde)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        return base(x, t) + amplitude * torch.sin(2 * math.pi * t)[:, None] * (x @ a.T.to(x))

    return fn


def _points(ds: SyntheticDataset, sde: SDE, n: int, t_lo: float, t_hi: float, g: torch.Generator):
    x0 = ds.sample(n, g).to(DT)
    t = t_lo + (t_hi - t_lo) * torch.rand(n, generator=g, dtype=DT)
    x, _ = sde.perturb(x0, t, g)
    return x, t


def _rel_max(err: Tensor, scale: Tensor) -> float:
    """max_b err_b / (scale_b + 1e-8 max scale): relative error, guarded where the scale vanishes."""
    return float((err / (scale + 1e-8 * scale.max())).max())


def _z_max(samples: Tensor, exact: Tensor) -> float:
    """max |mean - exact| / SE over the trailing entries; samples: (N, ...), exact: (...)."""
    n = samples.shape[0]
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(n)
    floor = 1e-12 * (exact.abs() + mean.abs() + 1e-300)
    return float(((mean - exact).abs() / torch.maximum(se, floor)).max())


def closed_form_checks(
    ds: SyntheticDataset, sde: SDE, t_min: float, g: torch.Generator, out: BatteryOutput
) -> None:
    """Exact operators on the mixture's true score s = grad log q_t, against closed forms.

    At 128 points (x ~ q_t, t uniform in [t_min, T]), float64: the vector residual
    eps = d_t s - grad L[s] (relative to |d_t s|), the scalar residual d_t log q - L[s]
    (relative to |L[s]|), the autograd Jacobian J vs the closed-form Hessian of log q_t, div s vs
    tr J, and the curl ||J - J^T||_F^2 / ||J||_F^2, each bounded by ROUNDOFF_REL (squared for
    the curl). Also stores the residual curves R_FP(t) of the true and of `perturbed_score` (8
    times, 64 points) in ``out.series["rfp"]`` for the figure. Appends to ``out.results``.

    Cost: about 128 D backward passes per exact operator plus 2 x 8 x 64 residual evaluations;
    well under a second for D <= 2.
    """
    sec = "closed form"
    x, t = _points(ds, sde, 128, t_min, sde.T, g)
    sf = ds.score_fn(sde)
    eps = fp_residual(sf, sde, x, t, t_min=t_min)
    dts = time_derivative(sf, x, t, t_min=t_min, t_max=sde.T)
    out.results.append(CheckResult(
        sec, "vector residual |eps| / |d_t s| of the true score", _rel_max(eps.norm(dim=1), dts.norm(dim=1)),
        ROUNDOFF_REL, detail=f"exact residual, 128 points, t in [{t_min}, {sde.T}]",
    ))
    r = scalar_fp_residual(sf, ds.log_prob_fn(sde), sde, x, t)
    lop = fp_operator(sf, sde, x, t)
    out.results.append(CheckResult(
        sec, "scalar residual |d_t log q - L[s]| / |L[s]|", _rel_max(r.abs(), lop.abs()), ROUNDOFF_REL,
        detail="d_t log q by forward-mode AD, exact divergence",
    ))
    jac = jacobian(sf, x, t)
    jc = ds.truth.score_jacobian(x, t, sde)
    out.results.append(CheckResult(
        sec, "exact Jacobian vs closed-form Hessian of log q",
        float((jac - jc).abs().amax((1, 2)).max() / jc.abs().max()), ROUNDOFF_REL,
        detail="J = sum_k w_k (u_k u_k^T - C_k^-1) - s s^T",
    ))
    div = divergence(sf, x, t)
    tr = torch.diagonal(jc, dim1=1, dim2=2).sum(-1)
    out.results.append(CheckResult(
        sec, "exact divergence vs closed-form trace", _rel_max((div - tr).abs(), jc.abs().amax((1, 2))),
        ROUNDOFF_REL,
    ))
    asym = jacobian_asymmetry_sq(sf, x, t)
    out.results.append(CheckResult(
        sec, "||J - J^T||_F^2 / ||J||_F^2 of the true score (curl)",
        float((asym / jc.pow(2).sum((1, 2))).max()), ROUNDOFF_REL**2,
    ))
    # Residual curves of the true and a perturbed score, for the figure.
    grid = log_t_grid(max(t_min, 1e-3), sde.T, 8)
    sampler = lambda n, gg: ds.sample(n, gg).to(DT)  # noqa: E731
    true_c = fp_residual_curve(sf, sde, sampler, grid, n_points=64, t_min=t_min, generator=g)
    pert_c = fp_residual_curve(perturbed_score(ds, sde), sde, sampler, grid, n_points=64, t_min=t_min, generator=g)
    out.series["rfp"] = {"t": grid.tolist(), "true": true_c.mean.tolist(), "perturbed": pert_c.mean.tolist()}


def residual_estimator_checks(
    ds: SyntheticDataset, sde: SDE, t_min: float, g: torch.Generator, out: BatteryOutput,
    n_rep: int = 200,
) -> None:
    """The Hutchinson ("estimated") vector residual is unbiased for the exact one.

    On `perturbed_score` (non-zero residual, so the test is not vacuous) at 8 points with
    t in [max(t_min, 0.05), 0.95]: ``n_rep`` single-probe estimates per point, Gaussian and
    Rademacher probes; passes when max |mean - exact| / SE <= Z_BOUND over all entries. Also
    checks that min |eps| / |d_t s| >= 1e-8 for the perturbed score. Appends to ``out.results``.

    Cost: 2 x 8 n_rep residual estimates (one JVP/VJP each) plus 8 exact residuals.
    """
    sec = "estimated residual"
    sf = perturbed_score(ds, sde)
    x, t = _points(ds, sde, 8, max(t_min, 0.05), 0.95, g)
    exact = fp_residual(sf, sde, x, t, t_min=t_min)
    xr = x.repeat(n_rep, 1)
    tr = t.repeat(n_rep)
    for probe in ("gaussian", "rademacher"):
        est = fp_residual(
            sf, sde, xr, tr, method="estimated", time_method="exact", n_probes=1, probe=probe,
            generator=g, t_min=t_min,
        ).reshape(n_rep, *x.shape)
        out.results.append(CheckResult(
            sec, f"Hutchinson residual unbiased ({probe}), max |z|", _z_max(est, exact), Z_BOUND,
            detail=f"{n_rep} single-probe estimates at 8 points; exact |eps| up to {float(exact.norm(dim=1).max()):.3g}",
        ))
    out.results.append(CheckResult(
        sec, "perturbed score has a non-zero residual: min |eps| / |d_t s|",
        float((exact.norm(dim=1) / time_derivative(sf, x, t, t_min=t_min, t_max=sde.T).norm(dim=1).clamp_min(1e-300)).min()),
        1e-8, relation=">=", detail="the true score's is ~1e-13: the unbiasedness test above is not vacuous",
    ))


def fd_convergence(
    sf: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    stencil_fn: Callable[[float], Stencil],
    hs: Sequence[float],
    t_min: float,
    t_max: float,
) -> tuple[list[float], float]:
    """Convergence of a finite-difference stencil for d_t s.

    For each step h in ``hs``: err(h) = max_b |D_h s - d_t s|_2 / |d_t s|_2 with D_h the stencil
    ``stencil_fn(h)`` applied by `apply_stencil` and d_t s exact (forward-mode AD); then the
    least-squares slope of log err against log h, which should match the stencil's order while
    truncation error dominates round-off (err >> eps / h).

    x: (B, D), t: (B,) float64; every t + offset must lie in [t_min, t_max] for a meaningful
    error (not checked here). Returns (errors, slope). Cost: len(hs) stencil applications (one
    batched model call each) plus one exact time derivative.
    """
    exact = time_derivative(sf, x, t, t_min=t_min, t_max=t_max)
    errs = []
    for h in hs:
        approx = apply_stencil(sf, x, t, stencil_fn(h))
        errs.append(float(((approx - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-300)).max()))
    slope = float(np.polyfit(np.log(hs), np.log(errs), 1)[0])
    return errs, slope


def finite_difference_checks(
    ds: SyntheticDataset, sde: SDE, t_min: float, g: torch.Generator, out: BatteryOutput
) -> None:
    """Fitted orders of the time stencils, and no evaluation outside [t_min, T].

    Central and non-uniform (h_s, h_d) = (h, h/2) stencils at t = 0.5, forward at t_min (steps
    0.4 .. 0.05 t_min, below the score's time scale there) and backward at T, 16 points each:
    passes when |fitted slope - promised order| <= SLOPE_TOL (`fd_convergence`). Then the public
    `time_derivative` (non-uniform) at t = t_min and t = T must evaluate the score only inside
    [t_min, T] (bound 0). Appends to ``out.results`` and ``out.series["fd"]``.

    Cost: 4 x 4 stencil applications on 16 points.
    """
    sec = "finite differences"
    sf = ds.score_fn(sde)
    x0 = ds.sample(16, g).to(DT)
    cases = [
        ("central", lambda h: central_stencil(h), 0.5, [0.04, 0.02, 0.01, 0.005]),
        ("nonuniform (h_s, h_d) = (h, h/2)", lambda h: nonuniform_stencil(h, h / 2), 0.5, [0.04, 0.02, 0.01, 0.005]),
        ("one-sided forward at t_min", forward_stencil, t_min, None),
        ("one-sided backward at T", backward_stencil, sde.T, [0.04, 0.02, 0.01, 0.005]),
    ]
    series = {}
    for name, st, tc, hs in cases:
        if hs is None:
            # Near t_min the score changes on the time scale of v(t)/v'(t) ~ t: steps below it.
            hs = [tc * f for f in (0.4, 0.2, 0.1, 0.05)]
        tt = torch.full((x0.shape[0],), tc, dtype=DT)
        x, _ = sde.perturb(x0, tt, g)
        errs, slope = fd_convergence(sf, x, tt, st, hs, t_min, sde.T)
        promised = st(hs[0]).order
        series[name] = {"h": hs, "err": errs, "slope": slope}
        out.results.append(CheckResult(
            sec, f"{name}: |fitted order - {promised}|", abs(slope - promised), SLOPE_TOL,
            detail=f"fitted slope {slope:.3f} over h = {hs}; errors {['%.2e' % e for e in errs]}",
        ))
    out.series["fd"] = series
    # The public operator near the ends: no evaluation outside [t_min, T].
    seen: list[float] = []

    def spy(xx, tt):
        seen.extend([float(tt.min()), float(tt.max())])
        return sf(xx, tt)

    tt = torch.tensor([t_min, sde.T], dtype=DT)
    xx, _ = sde.perturb(ds.sample(2, g).to(DT), tt, g)
    time_derivative(spy, xx, tt, method="nonuniform", t_min=t_min, t_max=sde.T)
    outside = max(0.0, t_min - min(seen), max(seen) - sde.T)
    out.results.append(CheckResult(
        sec, "largest step outside [t_min, T] taken by the stencils at the ends", outside, 0.0,
    ))


def hutchinson_checks(
    ds: SyntheticDataset, sde: SDE, t_min: float, g: torch.Generator, out: BatteryOutput,
    n_probe: int = 4000,
) -> None:
    """Hutchinson estimators: unbiased, with the variance theory promises.

    On `perturbed_score` at 8 points, with J the exact Jacobian: the divergence estimate v^T J v
    is unbiased for tr J (max |z| <= Z_BOUND over ``n_probe`` probes) and its variance equals
    2 ||J_sym||_F^2 (Gaussian v) or 2 (||J_sym||_F^2 - sum_i J_ii^2) (Rademacher v), z-tested
    with the standard error sqrt((mu4 - Var^2) / N) of the sample variance; the estimators of
    ||J||_F^2 and, for D >= 2, of the curl ||J - J^T||_F^2 are unbiased; and the perturbed
    score's curl is >= 1e-3 (so the curl test is not vacuous). Appends to ``out.results`` and
    the running mean / variances to ``out.series``.

    Cost: about 4 x 8 n_probe JVP/VJPs (32,000 for the default) plus one exact Jacobian.
    """
    sec = "estimators"
    sf = perturbed_score(ds, sde)
    x, t = _points(ds, sde, 8, max(t_min, 0.05), 0.95, g)
    jac = jacobian(sf, x, t)
    div = torch.diagonal(jac, dim1=1, dim2=2).sum(-1)
    jsym = 0.5 * (jac + jac.transpose(1, 2))
    fro_sym = jsym.pow(2).sum((1, 2))
    diag_sq = torch.diagonal(jac, dim1=1, dim2=2).pow(2).sum(-1)
    xr, tr = x.repeat(n_probe, 1), t.repeat(n_probe)
    var_series = {}
    for probe, theory in (("gaussian", 2 * fro_sym), ("rademacher", 2 * (fro_sym - diag_sq))):
        est = divergence(sf, xr, tr, method="hutchinson", probe=probe, generator=g).reshape(n_probe, -1)
        out.results.append(CheckResult(
            sec, f"Hutchinson divergence unbiased ({probe}), max |z|", _z_max(est, div), Z_BOUND,
            detail=f"{n_probe} probes at 8 points",
        ))
        # Variance about the known mean: mean (est - div)^2 is unbiased for Var with standard
        # error sqrt((mu4 - Var^2) / N); zero for 2-D Rademacher, whose estimate takes 2 values.
        dev2 = (est - div).pow(2)
        var = dev2.mean(0)
        se = ((dev2.pow(2).mean(0) - var**2).clamp_min(0) / n_probe).sqrt()
        scale = theory.abs().max()
        zvar = (var - theory).abs() / torch.maximum(se, 1e-9 * scale + 1e-300)
        out.results.append(CheckResult(
            sec, f"Hutchinson variance = theory ({probe}), max |z|", float(zvar.max()), Z_BOUND,
            detail="theory: 2||J_sym||_F^2 (gaussian), 2(||J_sym||_F^2 - sum J_ii^2) (rademacher)",
        ))
        var_series[probe] = {"theory": theory.tolist(), "measured": var.tolist()}
        if probe == "gaussian":
            out.series["div_running"] = {
                "n": list(range(1, n_probe + 1)),
                "running": (est[:, 0].cumsum(0) / torch.arange(1, n_probe + 1)).tolist(),
                "exact": float(div[0]),
            }
    out.series["hutch_var"] = var_series
    fro = jac.pow(2).sum((1, 2))
    est = jacobian_frobenius_sq(sf, xr, tr, method="hutchinson", generator=g).reshape(n_probe, -1)
    out.results.append(CheckResult(
        sec, "Jacobian Frobenius estimator unbiased, max |z|", _z_max(est, fro), Z_BOUND,
        detail=f"{n_probe} gaussian probes at 8 points",
    ))
    if ds.dim == 1:
        return  # no curl in 1-D: ||J - J^T|| vanishes identically
    asym = (jac - jac.transpose(1, 2)).pow(2).sum((1, 2))
    est = jacobian_asymmetry_sq(sf, xr, tr, method="hutchinson", generator=g).reshape(n_probe, -1)
    out.results.append(CheckResult(
        sec, "curl ||J - J^T||_F^2 estimator unbiased, max |z|", _z_max(est, asym), Z_BOUND,
        detail=f"{n_probe} gaussian probe pairs at 8 points; exact value up to {float(asym.max()):.3g}",
    ))
    out.results.append(CheckResult(
            sec, "perturbed score has curl: min ||J - J^T||_F^2", float(asym.min()), 1e-3, relation=">=",
        ))


def run_battery(
    dataset: str, sde: SDE, *, t_min: float = 1e-3, seed: int = 0, symbolic: bool = True
) -> BatteryOutput:
    """Run every check on the named data set under ``sde``. Deterministic for a given seed.

    Raises:
        ValueError: unknown data set, or a data set without a closed-form Gaussian-mixture score.
    """
    ds = get_dataset(dataset)
    from scorefpe.data.mixtures import GaussianMixture

    if not isinstance(ds.truth, GaussianMixture):
        raise ValueError(
            f"`scorefpe check --dataset` needs a Gaussian-mixture data set; {dataset!r} is not one "
            f"(choose gmm1d, gmm2d or gmm8)"
        )
    if not (0 < t_min < sde.T):
        raise ValueError(f"t_min must lie in (0, T) = (0, {sde.T}), got {t_min}")
    g = torch.Generator().manual_seed(seed)
    out = BatteryOutput([])
    closed_form_checks(ds, sde, t_min, g, out)
    residual_estimator_checks(ds, sde, t_min, g, out)
    finite_difference_checks(ds, sde, t_min, g, out)
    hutchinson_checks(ds, sde, t_min, g, out)
    if symbolic:
        from scorefpe.validation.symbolic_checks import run_symbolic_checks  # sympy: import on use

        name = type(sde).__name__.replace("SDE", "").lower()
        if name in ("vp", "ve"):
            out.results.extend(run_symbolic_checks(name, seed=seed))
    return out
