"""Diagnostics over noise levels (the 2026 paper's Figures 6-8) for one or several score models.

On a log grid of t (default 1e-4 .. 1, 9 points), at points x(t) = a(t) x0 + std(t) z with x0
drawn from real images:

- r_FP(t) = 1/D E||eps[s](x, t)||^2, the score-FPE residual, by `residuals.fp_residual_curve` in
  its estimated mode (finite-difference d_t s, Hutchinson divergence; the product of two
  independent estimates, so unbiased up to the O(h^2) stencil error);
- r_DSM(t) = 1/D E||s(x(t), t) + z / std(t)||, the denoising score-matching error
  (`residuals.dsm_residual_curve`, FP-Diffusion's unsquared form);
- J(t) = 1/D E||grad_x s(x, t)||_F^2 by `operators.jacobian_frobenius_sq` (Hutchinson).

Each value has its standard error over the n points. Cost per t on n points: r_FP two estimated
residuals (each a few score evaluations plus a double backward), r_DSM one forward, J
n_probes VJPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from scorefpe import operators
from scorefpe._util import save_figure
from scorefpe.residuals import Curve, dsm_residual_curve, fp_residual_curve, log_t_grid, per_t_curve

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["DiagnosticCurves", "jacobian_frobenius_curve", "plot_diagnostics", "run_diagnostics"]


@dataclass(frozen=True)
class DiagnosticCurves:
    """r_FP(t), r_DSM(t) and the mean squared Jacobian Frobenius norm per dimension over t."""

    r_fp: Curve
    r_dsm: Curve
    jac_fro: Curve

    def to_dict(self) -> dict[str, Any]:
        return {c.name: c.as_rows() for c in (self.r_fp, self.r_dsm, self.jac_fro)}


def _image_sampler(images: Tensor) -> Callable[[int, torch.Generator | None], Tensor]:
    def sample(n: int, g: torch.Generator | None) -> Tensor:
        idx = torch.randint(0, images.shape[0], (n,), generator=g)
        return images[idx]

    return sample


def jacobian_frobenius_curve(
    score_fn: ScoreFn,
    sde: Any,
    sample_x0: Callable[[int, torch.Generator], Tensor],
    t_grid: Tensor,
    *,
    n_points: int = 32,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> Curve:
    """1/D E_{x ~ q_t}||J_s(x, t)||_F^2 at each t, Hutchinson with n_probes Gaussian probes
    (unbiased; variance per probe 2||J^T J||_F^2). Cost: n_probes VJPs on n_points per t."""

    def values(x: Tensor, tt: Tensor, _z: Tensor) -> Tensor:
        return operators.jacobian_frobenius_sq(
            score_fn, x, tt, method="hutchinson", n_probes=n_probes, generator=generator
        ).detach() / x[0].numel()

    return per_t_curve("jac_fro", sde, sample_x0, t_grid, values, n_points=n_points,
                       generator=generator)


def run_diagnostics(
    score_fn: ScoreFn,
    sde: Any,
    images: Tensor,
    *,
    n_points: int = 32,
    n_t: int = 9,
    t_lo: float = 1e-4,
    t_hi: float = 1.0,
    t_min: float = 1e-5,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> DiagnosticCurves:
    """The three curves (module docstring) of ``score_fn`` at n_t log-spaced t in [t_lo, t_hi],
    from x0 drawn (with replacement) from ``images`` (N, ...). t_min is the model's smallest
    time: the time stencil never evaluates below it.

    Raises:
        ValueError: bad grid (0 < t_lo < t_hi, n_t >= 2), t_lo < t_min, or the operators' errors.
    """
    if t_lo < t_min:
        raise ValueError(f"t_lo = {t_lo} lies below the model's t_min = {t_min}")
    grid = log_t_grid(t_lo, t_hi, n_t, dtype=images.dtype)
    sx0 = _image_sampler(images)
    r_fp = fp_residual_curve(
        score_fn, sde, sx0, grid, n_points=n_points, method="estimated", n_probes=n_probes,
        t_min=t_min, generator=generator,
    )
    r_fp = Curve(r_fp.name, r_fp.t, r_fp.mean.detach(), r_fp.se.detach())
    r_dsm = dsm_residual_curve(score_fn, sde, sx0, grid, n_points=n_points, generator=generator)
    jac = jacobian_frobenius_curve(
        score_fn, sde, sx0, grid, n_points=n_points, n_probes=n_probes, generator=generator
    )
    return DiagnosticCurves(r_fp, r_dsm, jac)


_PANELS = (
    ("r_fp", "r_FP(t) = E||eps||^2 / D", "symlog"),
    ("r_dsm", "r_DSM(t) = E||s + z/std|| / D", "log"),
    ("jac_fro", "E||J_s||_F^2 / D", "log"),
)


def plot_diagnostics(curves: dict[str, DiagnosticCurves], path: str | Path) -> Path:
    """One figure, three panels (r_FP, r_DSM, Jacobian norm) against t on a log axis, one line
    per run (label -> curves) with +-1 standard error bands; written atomically as PNG.

    r_FP switches to a symmetric-log axis when an estimate is <= 0 (the product of two
    independent estimates is unbiased and may dip below zero where the true value is small).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("no curves to plot")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (attr, title, yscale) in zip(axes, _PANELS):
        for label, dc in curves.items():
            c: Curve = getattr(dc, attr)
            t, m, s = c.t.double().numpy(), c.mean.double().numpy(), c.se.double().numpy()
            ax.plot(t, m, marker="o", ms=3, label=label)
            ax.fill_between(t, m - s, m + s, alpha=0.2)
        ax.set_xscale("log")
        means = torch.cat([getattr(dc, attr).mean.double().reshape(-1) for dc in curves.values()])
        pos = means[means > 0].abs()
        if yscale == "symlog" and bool((means <= 0).any()):
            ax.set_yscale("symlog", linthresh=float(pos.min()) if pos.numel() else 1.0)
        else:
            ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def diagnostics_for_runs(
    run_dirs: list[str | Path],
    images: Tensor,
    path: str | Path,
    **kwargs: Any,
) -> dict[str, DiagnosticCurves]:
    """Load each MNIST run directory's EMA model, compute `run_diagnostics` (kwargs passed on)
    with the same seed for every run, and plot all of them on one figure at ``path``.

    Raises:
        FileNotFoundError / ValueError: a run that cannot be loaded, and those of run_diagnostics.
    """
    from scorefpe.training.mnist_unet import load_run

    out: dict[str, DiagnosticCurves] = {}
    seed = kwargs.pop("seed", 0)
    for rd in run_dirs:
        model, sde, config = load_run(rd)
        t_min = float(config.get("penalty", {}).get("t_min", 1e-5))
        out[Path(rd).name] = run_diagnostics(
            model, sde, images, t_min=t_min, generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )
    plot_diagnostics(out, path)
    return out
