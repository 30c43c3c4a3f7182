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
    "curves_csv",
    "format_convergence",
    "format_paired",
    "format_table",
    "paired_records",
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


def evaluated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that have an evaluation (not the diverged runs of `diverged_record`)."""
    return [r for r in records if r.get("eval") is not None]


def _datasets(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["dataset"] for r in evaluated(records)))


def _rows(records: list[dict[str, Any]]):
    """(data set, model label, records of that model sorted by seed) in table order; diverged
    runs are left out."""
    records = evaluated(records)
    for d in _datasets(records):
        recs = [r for r in records if r["dataset"] == d]
        for lab in model_order(recs):
            rs = sorted((r for r in recs if r["model"] == lab),
                        key=lambda r: -1 if r["seed"] is None else r["seed"])
            yield d, lab, rs


TABLE_HEAD = ("| data set | model | seeds | NLL (nats) | true NLL | gap = NLL - true | KL (grid) | "
              "TV (grid) | curl MSE, E over t ~ U[t_min, T] | mean r_FP | train s (steps/s) |")


def format_table(records: list[dict[str, Any]]) -> str:
    """Markdown table: one row per data set x model, mean ± sample std over seeds. The curl MSE
    is the time mean on the finest log-spaced grid (`scorefpe.metrics.conservativity`)."""
    lines = [TABLE_HEAD, "|" + "---|" * 11]
    for d, lab, rs in _rows(records):
        ev = [r["eval"] for r in rs]
        seeds = ",".join(str(r["seed"]) for r in rs) if rs[0]["seed"] is not None else "-"
        if rs[0]["train"] is None:
            tr = "-"
        else:
            tr = (f"{_agg([r['train']['seconds'] for r in rs])} "
                  f"({statistics.fmean(r['train']['steps_per_s'] for r in rs):.1f})")
        curl = _agg([e["curl_mse"] for e in ev]) if ev[0]["curl_mse"] is not None else "0 (1-D)"
        lines.append(
            f"| {d} | {lab} | {seeds} | {_agg([e['nll'] for e in ev])} | "
            f"{_agg([e['true_nll'] for e in ev])} | {_agg([e['gap'] for e in ev])} | "
            f"{_agg([e['kl'] for e in ev])} | {_agg([e['tv'] for e in ev])} | {curl} | "
            f"{_agg([e['r_fp'] for e in ev])} | {tr} |"
        )
    return "\n".join(lines) + "\n"


def format_convergence(records: list[dict[str, Any]]) -> str:
    """Markdown table of the curl MSE's grid-convergence check: the time mean on each log grid
    (mean ± std over seeds), beside the pre-issue-16 10-point uniform trapezoid."""
    grids: list[str] = []
    for r in evaluated(records):
        for n in (r["eval"].get("curl_mse_by_grid") or {}):
            if n not in grids:
                grids.append(n)
    grids.sort(key=int)
    if not grids:
        return ""
    head = ("| data set | model | " + " | ".join(f"n_t = {n} (log)" for n in grids)
            + " | old: 10 uniform |")
    lines = [head, "|" + "---|" * (3 + len(grids))]
    for d, lab, rs in _rows(records):
        ev = [r["eval"] for r in rs]
        if ev[0].get("curl_mse_by_grid") is None:
            continue
        cells = [_agg([e["curl_mse_by_grid"][n]["value"] for e in ev]) for n in grids]
        lines.append(f"| {d} | {lab} | " + " | ".join(cells)
                     + f" | {_agg([e['curl_mse_uniform10'] for e in ev])} |")
    return "\n".join(lines) + "\n"


# (key in eval, label, transform): curl and r_FP span orders of magnitude between seeds, so
# their paired differences are taken on log10 (a ratio); NLL gap, KL, TV in their own units.
PAIRED_METRICS: tuple[tuple[str, str, str], ...] = (
    ("gap", "NLL gap (nats)", "identity"),
    ("nll", "NLL (nats)", "identity"),
    ("kl", "KL (grid)", "identity"),
    ("tv", "TV (grid)", "identity"),
    ("curl_mse", "log10 curl MSE", "log10"),
    ("r_fp", "log10 r_FP", "log10"),
)


def paired_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FP model vs DSM per data set and metric, paired by seed (only seeds both have):
    {dataset, model, metric, n, mean_diff (FP - DSM, transformed), ci_low, ci_high, p_ttest,
    p_signflip, p_signflip_min, n_lower (seeds where FP < DSM)}. The NLL row is given only
    where the gap is not (without a closed form; on the same points the differences agree)."""
    from scorefpe.experiments.significance import paired_comparison

    out = []
    records = evaluated(records)
    for d in _datasets(records):
        recs = [r for r in records if r["dataset"] == d and r["seed"] is not None]
        base = {r["seed"]: r["eval"] for r in recs if r["model"] == "DSM"}
        for lab in model_order(recs):
            if lab == "DSM":
                continue
            trt = {r["seed"]: r["eval"] for r in recs if r["model"] == lab}
            seeds = sorted(set(base) & set(trt))
            if len(seeds) < 2:
                continue
            for key, name, tf in PAIRED_METRICS:
                if key == "nll" and base[seeds[0]].get("gap") is not None:
                    continue
                a = [trt[s].get(key) for s in seeds]
                b = [base[s].get(key) for s in seeds]
                if any(v is None for v in a + b):
                    continue
                if tf == "log10":
                    a, b = [math.log10(v) for v in a], [math.log10(v) for v in b]
                pc = paired_comparison(a, b)
                out.append(dict(dataset=d, model=lab, metric=name, n=pc.n,
                                mean_diff=pc.mean_diff, ci_low=pc.ci_low, ci_high=pc.ci_high,
                                p_ttest=pc.p_ttest, p_signflip=pc.p_signflip,
                                p_signflip_min=pc.p_signflip_min,
                                n_lower=sum(x < y for x, y in zip(a, b))))
    return out


def format_paired(records: list[dict[str, Any]]) -> str:
    """Markdown table of `paired_records`."""
    rows = paired_records(records)
    if not rows:
        return ""
    lines = ["| data set | model vs DSM | metric | n | mean (FP - DSM) | 95 % bootstrap CI | "
             "p paired t | p sign-flip (min) | FP lower |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['metric']} | {r['n']} | "
                     f"{r['mean_diff']:.3g} | [{r['ci_low']:.3g}, {r['ci_high']:.3g}] | "
                     f"{r['p_ttest']:.2g} | {r['p_signflip']:.2g} ({r['p_signflip_min']:.2g}) | "
                     f"{r['n_lower']}/{r['n']} |")
    return "\n".join(lines) + "\n"


def curves_csv(records: list[dict[str, Any]], key: str = "curl") -> str:
    """The per-t curve ``key`` of every record as CSV text: dataset,model,seed,t,mean,se (the
    numbers behind the curve figures)."""
    lines = ["dataset,model,seed,t,mean,se"]
    for d, lab, rs in _rows(records):
        for r in rs:
            c = r["eval"]["curves"].get(key)
            if c is None:
                continue
            seed = "" if r["seed"] is None else r["seed"]
            for t, m, se in zip(c["t"], c["mean"], c["se"]):
                lines.append(f"{d},{lab},{seed},{t!r},{m!r},{se!r}")
    return "\n".join(lines) + "\n"


def compute_seconds(records: list[dict[str, Any]]) -> float:
    """Training plus evaluation seconds summed over the records (the closed form has no
    training; a reused run counts the time recorded when it was made)."""
    return sum((r["train"] or {}).get("seconds", 0.0) + r["eval"]["seconds"]
               for r in evaluated(records))


def format_diverged(records: list[dict[str, Any]]) -> str:
    """One line per diverged run (empty when none): data set, model, seed, step, term."""
    lines = []
    for r in records:
        dv = r.get("diverged")
        if dv:
            lines.append(f"- {r['dataset']} {r['model']} seed {r['seed']}: {dv['term']} = "
                         f"{dv['value']} at step {dv['step']} of {dv['steps']}")
    if not lines:
        return ""
    return ("Diverged trainings (non-finite loss or gradient; left out of the means and the "
            "paired tests, whose seeds columns show which seeds count; the draws are seeded, so "
            "a rerun diverges at the same step):\n\n" + "\n".join(lines) + "\n")


def table_markdown(records: list[dict[str, Any]], command: str, wall_seconds: float) -> str:
    """table.md of the benchmark: the command that made it, the machine (CPU model, torch
    version and threads), the summed compute time (`compute_seconds`) and this invocation's wall
    time, then `format_table` and `format_diverged`."""
    n = torch.get_num_threads()
    head = (f"Command: `{command}`\n\nMachine: {cpu_name()}, torch {torch.__version__}, "
            f"{n} thread{'s' if n != 1 else ''}. Sum over models of training + evaluation time: "
            f"{compute_seconds(records):.0f} s; wall time of this invocation: {wall_seconds:.0f} s "
            f"(runs with an eval.json already present are reused, not retimed).\n\n")
    out = head + format_table(records)
    div = format_diverged(records)
    if div:
        out += "\n" + div
    conv = format_convergence(records)
    if conv:
        out += ("\nCurl MSE time mean on log-spaced grids of n_t times (grid-convergence "
                "check), and the pre-issue-16 uniform 10-point trapezoid:\n\n" + conv)
    paired = format_paired(records)
    if paired:
        out += ("\nPaired by seed, FP - DSM (paired t-test, exact sign-flip test with its "
                "smallest attainable p, percentile bootstrap of the mean difference):\n\n"
                + paired)
    return out


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
    records = evaluated(records)
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
                ylabel: str, *, floor: float | None = None) -> Path | None:
    """One panel per data set: curve ``key`` ('curl', 'r_fp', 'r_dsm') over log t for each
    model, mean over seeds with the seed range shaded; log scale (values below 1e-40 drawn at
    1e-40). ``floor``: a model whose curve stays below it everywhere (the closed form's
    round-off) is not drawn but named in the legend with its largest value, so that it does not
    squash the trained models' curves. Returns the path written, or None (nothing written) when
    no data set has that curve (the curl of 1-D sets)."""
    records = evaluated(records)
    datasets = [d for d in dict.fromkeys(r["dataset"] for r in records)
                if any(key in r["eval"]["curves"] for r in records if r["dataset"] == d)]
    if not datasets:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(3.4 * len(datasets), 5.0), 3.4),
                             squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for lab in model_order([r for r in records if r["dataset"] == d]):
            rs = [r for r in records if r["dataset"] == d and r["model"] == lab
                  and key in r["eval"]["curves"]]
            if not rs:
                continue
            t = rs[0]["eval"]["curves"][key]["t"]
            ys = torch.tensor([r["eval"]["curves"][key]["mean"] for r in rs]).clamp_min(1e-40)
            if floor is not None and float(ys.max()) < floor:
                ax.plot([], [], " ", label=f"{lab}: < {float(ys.max()):.1g} (not drawn)")
                continue
            (line,) = ax.plot(t, ys.mean(0), marker=".", lw=1, label=f"{lab} (n={len(rs)})")
            if len(rs) > 1:
                ax.fill_between(t, ys.min(0).values, ys.max(0).values, color=line.get_color(),
                                alpha=0.2)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("t (log)")
        ax.set_title(d, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_samples(out_dir: str | Path, records: list[dict[str, Any]], path: str | Path,
                 title: str, n: int = 1000, seed: int = 0) -> None:
    """Probability-flow ODE samples (rtol = atol = 1e-4) of each trained model (lowest seed) next
    to data samples; 1-D sets as histograms."""
    from scorefpe.sampling.samplers import probability_flow_ode

    plt = _plt()
    records = evaluated(records)
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
