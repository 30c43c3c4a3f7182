"""Several trained models' model-check reports overlaid in one figure (the 2026 paper's
Figs. 6-8: r_FP(t), Asym / NAsym and the other diagnostics, one curve per loss).

`check_runs` runs `check_model` on each run directory with the same x0 source, t grid and seed
(common random numbers: every model sees the same x0, z and probe draws, so the curves differ by
the model alone); `plot_overlay` draws the reports; `overlay_csv` writes them in long format.
Nothing is computed here that `check_model` does not compute.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from scorefpe._util import atomic_write_text, run_labels, save_figure
from scorefpe.modelcheck.compute import check_model
from scorefpe.modelcheck.report import ModelReport, style_panel

__all__ = ["OVERLAY_QUANTITIES", "check_runs", "overlay_csv", "plot_overlay", "write_overlay"]

# Panels, in order: the score-FPE residual, the asymmetry of the Jacobian (absolute and
# normalised: conservativity), then the other diagnostics of the paper's figures.
OVERLAY_QUANTITIES: tuple[str, ...] = ("r_fp", "asym", "nasym", "dsm", "div_mean", "jac_fro_sq")

Sampler = Callable[[int, "torch.Generator | None"], torch.Tensor]



def check_runs(
    run_dirs: Sequence[str | Path],
    sample_x0: Sampler,
    *,
    t_grid: Sequence[float],
    seed: int = 0,
    **check_kw: Any,
) -> dict[str, ModelReport]:
    """`check_model` on the trained model of each run directory (EMA weights, its own SDE).

    sample_x0: x(0) draws shared by all runs (e.g. ``data_sampler("mnist").sample``). Each run
    gets a fresh ``torch.Generator().manual_seed(seed)``, so x0, z and probes are the same draws
    for every run. check_kw: passed to `check_model` (n_points, n_probes, mode, batch_size,
    dtype, compute_dsm, ...). Cost: len(run_dirs) model checks.

    Returns run label (`run_labels`) -> ModelReport, in the order given.

    Raises:
        ValueError: no runs, repeated names, a run that cannot be loaded, what check_model raises.
    """
    from scorefpe.modelcheck.loading import load_run_dir

    if not run_dirs:
        raise ValueError("give at least one run directory")
    labels = run_labels(run_dirs)
    base_meta = dict(check_kw.pop("meta", None) or {})
    out: dict[str, ModelReport] = {}
    for label, rd in zip(labels, run_dirs):
        loaded = load_run_dir(rd)
        if loaded.sde is None:
            raise ValueError(f"{rd} does not record its SDE (not a scorefpe training run)")
        meta = dict(base_meta, model=str(rd))
        out[label] = check_model(loaded.model, loaded.sde, sample_x0, t_grid=t_grid,
                                 generator=torch.Generator().manual_seed(seed), meta=meta,
                                 **check_kw)
    return out


def plot_overlay(reports: Mapping[str, ModelReport], path: str | Path, *,
                 quantities: Sequence[str] = OVERLAY_QUANTITIES, title: str = "") -> Path:
    """One PNG: a panel per quantity over t (log t), one curve per report with its 95 % CI band.

    Quantities absent from every report are skipped (e.g. DSM without data). Scales as in
    `ModelReport.plot` (`style_panel`), chosen on all curves of a panel. Returns the path.

    Raises:
        ValueError: no reports, or none of ``quantities`` in any report.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not reports:
        raise ValueError("no reports to overlay")
    qs = [q for q in quantities if any(q in r.stats for r in reports.values())]
    if not qs:
        raise ValueError(f"none of {list(quantities)} is in the reports")
    ncol = min(3, len(qs))
    nrow = math.ceil(len(qs) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.3 * nrow), squeeze=False)
    for ax, q in zip(axes.flat, qs):
        present = {label: rep for label, rep in reports.items() if q in rep.stats}
        # One scale for every curve of the panel: chosen on all their means together.
        floor = style_panel(ax, q, [s.mean for rep in present.values() for s in rep.stats[q]])
        for label, rep in present.items():
            st = rep.stats[q]
            lines = ax.plot(list(rep.t), [s.mean for s in st], "o-", ms=3, label=label)
            lo = [max(s.lo, floor) if floor is not None and math.isfinite(s.lo) else s.lo
                  for s in st]
            ax.fill_between(list(rep.t), lo, [s.hi for s in st], alpha=0.15,
                            color=lines[0].get_color())
    for ax in list(axes.flat)[len(qs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def overlay_csv(reports: Mapping[str, ModelReport]) -> str:
    """The reports in long format: run, t, quantity, mean, se, lo, hi (one row each)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "t", "quantity", "mean", "se", "lo", "hi"])
    for label, rep in reports.items():
        for q in rep.quantities:
            for t, s in zip(rep.t, rep.stats[q]):
                w.writerow([label, repr(t), q, repr(s.mean), repr(s.se), repr(s.lo), repr(s.hi)])
    return buf.getvalue()


def write_overlay(reports: Mapping[str, ModelReport], out_dir: str | Path, *,
                  title: str = "") -> tuple[Path, Path]:
    """`plot_overlay` to out_dir/overlay.png and `overlay_csv` to out_dir/overlay.csv (atomic
    writes, after both are computed). Returns (png, csv). Raises what `plot_overlay` raises."""
    out_dir = Path(out_dir)
    png = plot_overlay(reports, out_dir / "overlay.png", title=title)
    table = out_dir / "overlay.csv"
    atomic_write_text(table, overlay_csv(reports))
    return png, table
