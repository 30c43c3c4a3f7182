"""The synthetic benchmark's markdown table and figures, built from the records of
`scorefpe.experiments.synthetic_bench.run_benchmark` (one JSON per model, so they can be rebuilt
without retraining)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from scorefpe._util import cpu_name, save_figure
from scorefpe.experiments.synthetic_bench import GRID_BOXES, build_model, load_synthetic_run
from scorefpe.data.synthetic import get_dataset

__all__ = [
    "compute_seconds",
    "format_table",
    "model_order",
    "plot_curves",
    "plot_densities",
    "plot_samples",
    "table_markdown",
]


def model_order(records: list[dict[str, Any]]) -> list[str]:
    """Model labels in the order DSM, FP (by alpha), closed form."""
    labels = []
    for r in records:
        if r["model"] not in labels:
            labels.append(r["model"])

    def key(lab: str) -> tuple[int, float]:
        if lab == "DSM":
            return (0, 0.0)
        if lab == "closed form":
            return (2, 0.0)
        try:
            return (1, float(lab.split("a=")[1].split()[0]))
        except (IndexError, ValueError):
            return (1, math.inf)

    return sorted(labels, key=key)


def _agg(vals: list[float | None]) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "n/a"
    m = statistics.fmean(v)
    if len(v) == 1 or max(v) == min(v):
        return f"{m:.3g}"
    return f"{m:.3g} ± {statistics.stdev(v):.2g}"


def format_table(records: list[dict[str, Any]]) -> str:
    """Markdown table: one row per data set x model, mean ± sample std over seeds."""
    head = ("| data set | model | seeds | NLL (nats) | true NLL | gap = NLL - true | KL (grid) | "
            "TV (grid) | curl MSE (t-avg) | mean r_FP | mean r_DSM | train s (steps/s) |")
    lines = [head, "|" + "---|" * 12]
    datasets = []
    for r in records:
        if r["dataset"] not in datasets:
            datasets.append(r["dataset"])
    for d in datasets:
        recs = [r for r in records if r["dataset"] == d]
        for lab in model_order(recs):
            rs = [r for r in recs if r["model"] == lab]
            ev = [r["eval"] for r in rs]
            seeds = ",".join(str(r["seed"]) for r in rs) if rs[0]["seed"] is not None else "-"
            gaps = [e["gap"] for e in ev]
            if rs[0]["train"] is None:
                tr = "-"
            else:
                tr = (f"{_agg([r['train']['seconds'] for r in rs])} "
                      f"({statistics.fmean(r['train']['steps_per_s'] for r in rs):.1f})")
            curl = _agg([e["curl_mse"] for e in ev]) if ev[0]["curl_mse"] is not None else "0 (1-D)"
            lines.append(
                f"| {d} | {lab} | {seeds} | {_agg([e['nll'] for e in ev])} | "
                f"{_agg([e['true_nll'] for e in ev])} | {_agg(gaps)} | "
                f"{_agg([e['kl'] for e in ev])} | {_agg([e['tv'] for e in ev])} | {curl} | "
                f"{_agg([e['r_fp'] for e in ev])} | {_agg([e['r_dsm'] for e in ev])} | {tr} |"
            )
    return "\n".join(lines) + "\n"


def compute_seconds(records: list[dict[str, Any]]) -> float:
    """Training plus evaluation seconds summed over the records (the closed form has no
    training; a reused run counts the time recorded when it was made)."""
    return sum((r["train"] or {}).get("seconds", 0.0) + r["eval"]["seconds"] for r in records)


def table_markdown(records: list[dict[str, Any]], command: str, wall_seconds: float) -> str:
    """table.md of the benchmark: the command that made it, the machine (CPU model, torch
    version and threads), the summed compute time (`compute_seconds`) and this invocation's wall
    time, then `format_table`."""
    head = (f"Command: `{command}`\n\nMachine: {cpu_name()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads. Sum over models of training + evaluation time: "
            f"{compute_seconds(records):.0f} s; wall time of this invocation: {wall_seconds:.0f} s "
            f"(runs with an eval.json already present are reused, not retimed).\n\n")
    return head + format_table(records)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _first_seed(records, d, lab):
    rs = [r for r in records if r["dataset"] == d and r["model"] == lab]
    return min(rs, key=lambda r: -1 if r["seed"] is None else r["seed"]) if rs else None


def plot_densities(records: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Rows: data sets; columns: true q_{t_min} then each model's p_{t_min} (lowest seed) on the
    evaluation grid. 1-D sets are drawn as curves in one panel."""
    plt = _plt()
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    labels = [lab for lab in model_order(records) if lab != "closed form"]
    ncol = 1 + len(labels)
    fig, axes = plt.subplots(len(datasets), ncol, figsize=(2.6 * ncol, 2.6 * len(datasets)),
                             squeeze=False)
    for i, d in enumerate(datasets):
        ref = _first_seed(records, d, labels[0])
        axis = ref["eval"]["grid_axis"]
        lo, hi = GRID_BOXES[d]
        ds = get_dataset(d)
        if ds.dim == 1:
            ax = axes[i, 0]
            if ref["eval"]["grid_log_q"] is not None:
                ax.plot(axis, torch.tensor(ref["eval"]["grid_log_q"]).exp(), "k", lw=2, label="true")
            for lab in labels:
                r = _first_seed(records, d, lab)
                ax.plot(axis, torch.tensor(r["eval"]["grid_log_p"]).exp(), lw=1, label=lab)
            ax.set_title(f"{d}: densities")
            ax.legend(fontsize=6)
            for j in range(1, ncol):
                axes[i, j].axis("off")
            continue
        n = len(axis)
        ext = (lo, hi, lo, hi)
        if ref["eval"]["grid_log_q"] is not None:
            q = torch.tensor(ref["eval"]["grid_log_q"]).exp().reshape(n, n)
            axes[i, 0].imshow(q, origin="lower", extent=ext, cmap="viridis")
            axes[i, 0].set_title(f"{d}: true q(t_min)", fontsize=8)
        else:
            xs = ds.sample(4000, torch.Generator().manual_seed(0))
            axes[i, 0].hist2d(xs[:, 0].numpy(), xs[:, 1].numpy(), bins=n,
                              range=[[lo, hi], [lo, hi]], cmap="viridis")
            axes[i, 0].set_title(f"{d}: data histogram\n(no closed form)", fontsize=8)
        for j, lab in enumerate(labels, start=1):
            r = _first_seed(records, d, lab)
            p = torch.tensor(r["eval"]["grid_log_p"]).exp().reshape(n, n)
            axes[i, j].imshow(p, origin="lower", extent=ext, cmap="viridis")
            kl = r["eval"].get("kl")
            extra = "" if kl is None else f"\nKL {kl:.3g}, TV {r['eval']['tv']:.3g}"
            axes[i, j].set_title(f"{lab} (seed {r['seed']}){extra}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(records: list[dict[str, Any]], key: str, path: str | Path, title: str,
                ylabel: str) -> Path | None:
    """One panel per data set: curve ``key`` ('curl', 'r_fp', 'r_dsm') over t for each model,
    mean over seeds with the seed range shaded; log scale (values below 1e-40 drawn at 1e-40).
    Returns the path written, or None (nothing written) when no data set has that curve (the
    curl of 1-D sets)."""
    datasets = [d for d in dict.fromkeys(r["dataset"] for r in records)
                if any(key in r["eval"]["curves"] for r in records if r["dataset"] == d)]
    if not datasets:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.4 * len(datasets), 3.0), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for lab in model_order([r for r in records if r["dataset"] == d]):
            rs = [r for r in records if r["dataset"] == d and r["model"] == lab
                  and key in r["eval"]["curves"]]
            if not rs:
                continue
            t = rs[0]["eval"]["curves"][key]["t"]
            ys = torch.tensor([r["eval"]["curves"][key]["mean"] for r in rs]).clamp_min(1e-40)
            (line,) = ax.plot(t, ys.mean(0), marker=".", lw=1, label=f"{lab} (n={len(rs)})")
            if len(rs) > 1:
                ax.fill_between(t, ys.min(0).values, ys.max(0).values, color=line.get_color(),
                                alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(d, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_samples(out_dir: str | Path, records: list[dict[str, Any]], path: str | Path,
                 title: str, n: int = 1000, seed: int = 0) -> None:
    """Probability-flow ODE samples (rtol = atol = 1e-4) of each trained model (lowest seed) next
    to data samples; 1-D sets as histograms."""
    from scorefpe.sampling.samplers import probability_flow_ode

    plt = _plt()
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    labels = [lab for lab in model_order(records) if lab != "closed form"]
    ncol = 1 + len(labels)
    fig, axes = plt.subplots(len(datasets), ncol, figsize=(2.6 * ncol, 2.6 * len(datasets)),
                             squeeze=False)
    for i, d in enumerate(datasets):
        ds = get_dataset(d)
        lo, hi = GRID_BOXES[d]
        data = ds.sample(n, torch.Generator().manual_seed(seed))
        panels = [("data", data)]
        for lab in labels:
            r = _first_seed(records, d, lab)
            rel = Path(out_dir) / "runs" / d / _run_name(r)
            model, cfg = load_synthetic_run(rel, ema=r.get("weights") == "ema")
            sde = build_model(cfg)[1]
            res = probability_flow_ode(model, sde, (n, ds.dim), t_min=cfg.t_min, rtol=1e-4,
                                       atol=1e-4, generator=torch.Generator().manual_seed(seed))
            panels.append((f"{lab} (seed {r['seed']})", res.samples.double()))
        for j, (name, xs) in enumerate(panels):
            ax = axes[i, j]
            if ds.dim == 1:
                ax.hist(xs[:, 0].clamp(lo, hi).numpy(), bins=80, range=(lo, hi), density=True)
            else:
                xs = xs.clamp(lo, hi)
                ax.scatter(xs[:, 0].numpy(), xs[:, 1].numpy(), s=1, alpha=0.5)
                ax.set_xlim(lo, hi)
                ax.set_ylim(lo, hi)
                ax.set_aspect("equal")
            ax.set_title(f"{d}: {name}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _run_name(rec: dict[str, Any]) -> str:
    cfg = rec["config"]
    if cfg["penalty"] == "none":
        return f"dsm_s{cfg['seed']}"
    return f"fp{cfg['alpha']:g}_s{cfg['seed']}"
