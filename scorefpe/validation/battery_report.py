"""Rendering of a validation battery: a plain-text table, JSON, and a figure."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from scorefpe._util import save_figure
from scorefpe.validation.result import CheckResult


def format_table(results: Sequence[CheckResult]) -> str:
    """One row per check: section, what was measured, the figure, the bound, PASS/FAIL."""
    rows = [("section", "check", "measured", "bound", "result")]
    for r in results:
        rows.append((r.section, r.name, f"{r.value:.3e}", f"{r.relation} {r.bound:.1e}",
                     "PASS" if r.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    n_fail = sum(not r.passed for r in results)
    lines.append(f"{len(results) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)


def to_json(results: Sequence[CheckResult], meta: dict[str, Any]) -> str:
    """The battery as indented JSON text: the ``meta`` entries (data set, SDE, seed, machine...),
    ``"passed"`` (all checks met their bounds) and ``"checks"``, one `CheckResult.to_dict` each.

    Raises:
        TypeError: a ``meta`` value JSON cannot encode.
    """
    return json.dumps({**meta, "passed": all(r.passed for r in results),
                       "checks": [r.to_dict() for r in results]}, indent=2)


def plot_battery(series: dict, title: str, path: str | os.PathLike) -> None:
    """Four panels: FD convergence, r_FP(t) true vs perturbed, Hutchinson variance, running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    for name, d in series.get("fd", {}).items():
        ax.loglog(d["h"], d["err"], "o-", label=f"{name} (slope {d['slope']:.2f})")
    ax.set_xlabel("step h")
    ax.set_ylabel("max relative error of d_t s")
    ax.set_title("Finite-difference d_t s converges at order 2")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    rfp = series.get("rfp")
    if rfp:
        ax.loglog(rfp["t"], [max(v, 1e-40) for v in rfp["true"]], "o-", label="closed-form score")
        ax.loglog(rfp["t"], rfp["perturbed"], "s-", label="perturbed score")
        ax.set_xlabel("t")
        ax.set_ylabel("r_FP(t) = E||eps||^2 / D")
        ax.set_title("Score-FPE residual: round-off vs O(1)")
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    for probe, d in series.get("hutch_var", {}).items():
        ax.scatter(d["theory"], d["measured"], label=probe)
    lims = [v for d in series.get("hutch_var", {}).values() for v in d["theory"] + d["measured"] if v > 0]
    if lims:
        ax.loglog([min(lims), max(lims)], [min(lims), max(lims)], "k--", lw=1, label="measured = theory")
    ax.set_xlabel("theoretical variance per probe")
    ax.set_ylabel("measured variance per probe")
    ax.set_title("Hutchinson divergence: variance matches theory")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    run = series.get("div_running")
    if run:
        ax.semilogx(run["n"], run["running"], label="running mean of estimates")
        ax.axhline(run["exact"], color="k", ls="--", lw=1, label="exact divergence")
        ax.set_xlabel("number of Gaussian probes")
        ax.set_ylabel("div s")
        ax.set_title("Hutchinson divergence converges to the exact value")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
