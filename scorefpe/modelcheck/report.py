"""The result object of `check_model`: per-t statistics with confidence intervals, and writers."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scorefpe._util import save_figure

Z95 = 1.959963984540054  # two-sided 95% normal quantile

__all__ = ["QUANTITIES", "Stat", "ModelReport", "Z95", "style_panel"]

# name -> (column label, description). Order is the table's and the figure's.
QUANTITIES: dict[str, tuple[str, str]] = {
    "r_fp": ("r_FP", "1/D E||eps||^2, score-FPE residual eps = d_t s - grad_x L[s]"),
    "dsm": ("DSM", "1/D E||std(t) s(x,t) + z||^2, denoising score matching loss at t"),
    "asym": ("Asym", "E[||J - J^T||_F^2 / 2] = E[tr(J J^T) - tr(J J)] (QCSBM)"),
    "nasym": ("NAsym", "E[Asym / (2 ||J||_F^2)], per point then averaged, in [0, 1] (QCSBM)"),
    "div_mean": ("div mean", "E[div_x s]"),
    "div_spread": ("div spread", "standard deviation of div_x s over points (probe noise removed)"),
    "jac_fro_sq": ("||J||_F^2/D", "1/D E||J||_F^2"),
    "score_sq": ("||s||^2/D", "1/D E||s||^2"),
    "true_dist": ("||s-s*||^2/D", "1/D E||s - s_true||^2, distance to the closed-form score"),
}


# Quantities that are >= 0 by definition (r_FP is not: its estimate is a product of two).
NONNEGATIVE = frozenset({"dsm", "asym", "nasym", "div_spread", "jac_fro_sq", "score_sq", "true_dist"})


@dataclass(frozen=True)
class Stat:
    """An estimate with its standard error; the CI is mean +- 1.96 se (normal, 95%)."""

    mean: float
    se: float

    @property
    def lo(self) -> float:
        return self.mean - Z95 * self.se

    @property
    def hi(self) -> float:
        return self.mean + Z95 * self.se

    def covers(self, value: float) -> bool:
        """Whether the 95% interval contains ``value``."""
        return self.lo <= value <= self.hi


def _md_cell(text: str) -> str:
    """Text for a GitHub-flavoured markdown table cell: ``|`` escaped as ``\\|`` (else
    ``||J||_F^2/D`` splits the row into extra cells)."""
    return str(text).replace("|", "\\|")


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def style_panel(ax: Any, q: str, means: list[float]) -> float | None:
    """Axes of one quantity's panel over t: log t; log y for a quantity >= 0 by definition (or
    positive means) spanning more than a decade, symlog for means that change sign over more
    than two decades, linear otherwise; title and grid. Returns the floor for the CI band on a
    log axis (a tenth of the smallest positive mean: the normal CI may dip below zero), else
    None."""
    finite = [v for v in means if math.isfinite(v)]
    pos = [v for v in finite if v > 0]
    floor = None
    if q in NONNEGATIVE and pos and max(pos) > 10 * min(pos):
        floor = 0.1 * min(pos)
        ax.set_yscale("log")
    elif finite and min(finite) > 0 and max(finite) > 10 * min(finite):
        ax.set_yscale("log")
    elif finite and min(finite) < 0 < max(finite):
        big = max(abs(v) for v in finite)
        small = min((abs(v) for v in finite if v != 0), default=big)
        if big > 100 * small:
            ax.set_yscale("symlog", linthresh=small)
    ax.set_xscale("log")
    ax.set_title(QUANTITIES[q][0])
    ax.set_xlabel("t")
    ax.grid(True, which="major", alpha=0.3)
    return floor


@dataclass(frozen=True)
class ModelReport:
    """Per-t report of `check_model`.

    t: the grid (increasing). stats[name][i]: the Stat of quantity ``name`` at t[i] (names from
    QUANTITIES; a quantity that could not be computed, e.g. DSM without data, is absent).
    meta: how it was computed (sde, param, D, mode, n_points, n_probes, seed, seconds, ...).
    """

    t: tuple[float, ...]
    stats: dict[str, tuple[Stat, ...]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def quantities(self) -> list[str]:
        return [q for q in QUANTITIES if q in self.stats]

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for i, t in enumerate(self.t):
            row: dict[str, Any] = {"t": t}
            for q in self.quantities:
                s = self.stats[q][i]
                row[q] = {"mean": _num(s.mean), "se": _num(s.se), "ci95": [_num(s.lo), _num(s.hi)]}
            rows.append(row)
        return {
            "meta": self.meta,
            "quantities": {q: QUANTITIES[q][1] for q in self.quantities},
            "rows": rows,
        }

    def to_json(self) -> str:
        """Strict JSON text (NaN/inf written as null): meta, descriptions of the quantities, and
        one row per t (mean, se, ci95)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_csv(self) -> str:
        """CSV text: one row per t; per quantity the columns <q>_mean, <q>_se, <q>_lo, <q>_hi."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = ["t"]
        for q in self.quantities:
            head += [f"{q}_mean", f"{q}_se", f"{q}_lo", f"{q}_hi"]
        w.writerow(head)
        for i, t in enumerate(self.t):
            row = [repr(t)]
            for q in self.quantities:
                s = self.stats[q][i]
                row += [repr(s.mean), repr(s.se), repr(s.lo), repr(s.hi)]
            w.writerow(row)
        return buf.getvalue()

    def table(self) -> str:
        """The markdown table alone: one row per t, ``mean ± 1.96 SE`` per quantity (GFM; the
        ``|`` inside column labels escaped)."""
        qs = self.quantities
        lines = ["| t | " + " | ".join(_md_cell(QUANTITIES[q][0]) for q in qs) + " |"]
        lines.append("|" + "---|" * (len(qs) + 1))
        for i, t in enumerate(self.t):
            cells = [f"{self.stats[q][i].mean:.3e} ± {Z95 * self.stats[q][i].se:.1e}" for q in qs]
            lines.append(f"| {t:.3g} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A markdown summary: how it was computed, the table, and what each column means."""
        m = self.meta
        out = ["# scorefpe model check", ""]
        for k in (
            "model", "sde", "param", "x0_source", "dim", "shape", "dtype", "mode",
            "n_points", "n_probes", "probe_evals", "seed", "seconds", "machine",
        ):
            if k in m:
                out.append(f"- {k}: {m[k]}")
        out += ["", "Each cell: mean ± 1.96 SE over points (95% CI; for estimated quantities the SE"
                " includes the probe noise, each point having its own probes).", "", self.table(), ""]
        out.append("Columns:")
        for q in self.quantities:
            out.append(f"- {QUANTITIES[q][0]}: {QUANTITIES[q][1]}")
        for note in m.get("notes", []):
            out.append(f"- note: {note}")
        return "\n".join(out) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Write one PNG, a panel per quantity over t (log t axis; log y where the means are
        positive and span more than a decade, symlog where they change sign over decades, linear
        otherwise), with the 95% CI as a band. Returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        qs = self.quantities
        ncol = 3
        nrow = max(1, math.ceil(len(qs) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
        t = list(self.t)
        for ax, q in zip(axes.flat, qs):
            st = self.stats[q]
            mean = [s.mean for s in st]
            floor = style_panel(ax, q, mean)
            lo = [max(s.lo, floor) if floor is not None and math.isfinite(s.lo) else s.lo
                  for s in st]
            ax.plot(t, mean, "o-", ms=3)
            ax.fill_between(t, lo, [s.hi for s in st], alpha=0.3)
        for ax in list(axes.flat)[len(qs):]:
            ax.axis("off")
        title = f"{self.meta.get('model', 'model')} ({self.meta.get('mode_short', '')}, D = {self.meta.get('dim', '?')})"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)
