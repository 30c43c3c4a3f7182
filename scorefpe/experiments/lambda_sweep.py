"""r_FP against the penalty weight lambda (the 2026 paper's Fig. 9).

For one penalty (fp by default) and each lambda of a list, ``seeds`` runs are trained with the
Table I machinery (`experiment.plan_runs` / `experiment.train_one`: same presets, markers and
exact resume), optionally with the unpenalised baseline (lambda = 0, loss none) beside them.
Each run's diagnostics over noise levels (`diagnostics.run_diagnostics`: r_FP(t) estimated,
r_DSM(t), E||J_s||_F^2 / D on a log grid of t) are computed at the same x(t) for every run
(common random numbers: one seed for the x0 and z draws), and aggregated per lambda:

- per t, the mean over seeds of r_FP(t) and its standard error over seeds (sample std, ddof 1,
  / sqrt(n_seeds); with one seed, the run's own standard error over its n_points);
- one number per run, the time average of log10 r_FP(t) over the grid (r_FP spans ~8 decades
  from t = 1e-4 to 1, so a plain average would be the value at the smallest t), then its mean
  and standard error over seeds. A grid point where the (unbiased, product-of-two-estimates)
  r_FP estimate is <= 0 has no logarithm: it is left out and counted in ``n_nonpositive``.

Layout of the sweep directory: ``sweep.json`` (settings), ``lam_<lambda>/<penalty>-s<seed>`` and
``baseline/none-s<seed>`` run directories (each with ``sweep_diagnostics.json``), and the
results ``lambda_sweep.json``, ``lambda_sweep.md`` and ``lambda_sweep_<penalty>.png``. A call
on an existing directory skips finished trainings and diagnostics, and may add lambdas or seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from scorefpe._util import atomic_write_text, save_figure
from scorefpe.experiments.table1 import (
    EXPERIMENT_PRESETS,
    LOSSES,
    TRAIN_MARKER,
    RunSpec,
    Table1Config,
    _training_done,
    plan_runs,
    train_one,
)

Tensor = torch.Tensor

SWEEP_JSON = "sweep.json"
DIAG_JSON = "sweep_diagnostics.json"
RESULT_JSON = "lambda_sweep.json"
RESULT_MD = "lambda_sweep.md"
CURVES = ("r_FP", "r_DSM", "jac_fro")

__all__ = [
    "DIAG_JSON",
    "RESULT_JSON",
    "RESULT_MD",
    "SWEEP_JSON",
    "SweepConfig",
    "SweepRun",
    "aggregate_sweep",
    "check_sweep_dir",
    "lam_dir_name",
    "plan_sweep",
    "plot_sweep",
    "run_lambda_sweep",
    "sweep_markdown",
]


@dataclass(frozen=True)
class SweepConfig:
    """A lambda sweep: penalty (fp, sn, jac or div), the lambdas (> 0), seeds 0..seeds-1,
    experiment preset (`experiment.EXPERIMENT_PRESETS`), epochs (None: the preset's), whether
    to train the lambda = 0 baseline, extra `mnist_run` overrides, and the diagnostics grid:
    n_points noised test images per t, n_t log-spaced t in [t_lo, t_hi], seed of their draws.

    Raises:
        ValueError: unknown penalty or preset (naming the valid ones), no lambdas, a lambda not
            positive and finite, repeated lambdas, seeds / epochs / n_points < 1, n_t < 2,
            not 0 < t_lo < t_hi.
    """

    penalty: str = "fp"
    lams: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    seeds: int = 2
    preset: str = "smoke"
    epochs: int | None = None
    baseline: bool = True
    extra_train: tuple[tuple[str, Any], ...] = field(default=())
    n_points: int = 32
    n_t: int = 9
    t_lo: float = 1e-4
    t_hi: float = 1.0
    diag_seed: int = 0

    def __post_init__(self) -> None:
        penalties = [x for x in LOSSES if x != "none"]
        if self.penalty not in penalties:
            raise ValueError(f"unknown penalty {self.penalty!r}; choose one of {penalties}")
        if self.preset not in EXPERIMENT_PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; choose one of {sorted(EXPERIMENT_PRESETS)}")
        lams = tuple(float(v) for v in self.lams)
        if not lams:
            raise ValueError("lams must hold at least one lambda")
        bad = [v for v in lams if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"every lambda must be positive and finite, got {bad}")
        if len(set(lams)) != len(lams):
            raise ValueError(f"lambdas must be distinct, got {list(lams)}")
        object.__setattr__(self, "lams", tuple(sorted(lams)))
        for name in ("seeds", "epochs", "n_points"):
            v = getattr(self, name)
            if v is None and name == "epochs":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.n_t, bool) or not isinstance(self.n_t, int) or self.n_t < 2:
            raise ValueError(f"n_t must be an integer >= 2, got {self.n_t!r}")
        if not (0 < self.t_lo < self.t_hi):
            raise ValueError(f"need 0 < t_lo < t_hi, got t_lo={self.t_lo}, t_hi={self.t_hi}")

    def diag_settings(self) -> dict[str, Any]:
        return {"n_points": self.n_points, "n_t": self.n_t, "t_lo": self.t_lo,
                "t_hi": self.t_hi, "diag_seed": self.diag_seed}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "lambda_sweep", "penalty": self.penalty, "lams": list(self.lams),
                "seeds": self.seeds, "preset": self.preset, "epochs": self.epochs,
                "baseline": self.baseline, "extra_train": [list(kv) for kv in self.extra_train],
                **self.diag_settings()}


# Settings that must match an existing sweep directory; lams, seeds, baseline may change.
_FIXED = ("penalty", "preset", "epochs", "extra_train", "n_points", "n_t", "t_lo", "t_hi",
          "diag_seed")


@dataclass(frozen=True)
class SweepRun:
    """One run of the sweep: lambda (0.0 for the baseline) and its Table I `RunSpec`."""

    lam: float
    spec: RunSpec


def lam_dir_name(lam: float) -> str:
    """Directory name of a lambda's runs: lam_<lambda in %g>, e.g. lam_0.001."""
    return f"lam_{lam:g}"


def plan_sweep(cfg: SweepConfig, out: str | Path) -> list[SweepRun]:
    """The runs of the sweep, baseline first, then by increasing lambda, seed-minor.

    The baseline is trained with the penalised runs' learning rate (the presets give fp 1e-3,
    none 5e-4): otherwise the comparison with lambda -> 0 measures the learning rate, not the
    penalty (measured: a 5e-4 baseline put r_FP 0.18 decades above the 1e-3 one)."""
    out = Path(out)
    runs: list[SweepRun] = []
    common = dict(preset=cfg.preset, seeds=cfg.seeds, epochs=cfg.epochs,
                  extra_train=cfg.extra_train)
    penalised = []
    for lam in cfg.lams:
        t1 = Table1Config(losses=(cfg.penalty,), lam=lam, **common)
        penalised += [SweepRun(lam, s) for s in plan_runs(t1, out / lam_dir_name(lam))]
    if cfg.baseline:
        lr = penalised[0].spec.run.train.lr
        extra = tuple(kv for kv in cfg.extra_train if kv[0] != "lr") + (("lr", lr),)
        t1 = Table1Config(losses=("none",), **{**common, "extra_train": extra})
        runs += [SweepRun(0.0, s) for s in plan_runs(t1, out / "baseline")]
    return runs + penalised


def check_sweep_dir(cfg: SweepConfig, out: str | Path) -> None:
    """Accept a missing or empty directory, or a lambda sweep with the same fixed settings
    (penalty, preset, epochs, extra_train, diagnostics grid); lams, seeds and baseline may differ.

    Raises:
        ValueError: ``out`` is a file, a non-empty directory that is not a lambda sweep, or a
            sweep with other fixed settings (naming them).
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    marker = out / SWEEP_JSON
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict) and old.get("kind") == "lambda_sweep":
            new = cfg.to_dict()
            diff = [k for k in _FIXED if old.get(k) != new[k]]
            if diff:
                raise ValueError(f"{out} holds a lambda sweep with other settings "
                                 f"({', '.join(diff)}); choose another --out")
            return
    if any(out.iterdir()):
        raise ValueError(f"--out {str(out)!r} exists and is not a lambda-sweep directory "
                         f"(no {SWEEP_JSON}); choose a new or empty directory")


def _marker_step(spec: RunSpec) -> int | None:
    try:
        return int(json.loads((spec.run_dir / TRAIN_MARKER).read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _diag_done(cfg: SweepConfig, spec: RunSpec) -> dict[str, Any] | None:
    p = spec.run_dir / DIAG_JSON
    if not p.is_file() or not _training_done(spec):
        return None
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    ok = rec.get("settings") == cfg.diag_settings() and rec.get("step") == _marker_step(spec)
    return rec if ok else None


def _run_diag(cfg: SweepConfig, spec: RunSpec, test_images: Tensor) -> dict[str, Any]:
    from scorefpe.evaluation.diagnostics import run_diagnostics
    from scorefpe.training.mnist_unet import load_run

    model, sde, config = load_run(spec.run_dir)
    curves = run_diagnostics(
        model, sde, test_images, n_points=cfg.n_points, n_t=cfg.n_t, t_lo=cfg.t_lo,
        t_hi=cfg.t_hi, t_min=float(config.get("penalty", {}).get("t_min", 1e-5)),
        generator=torch.Generator().manual_seed(cfg.diag_seed))
    rec = {"settings": cfg.diag_settings(), "step": _marker_step(spec),
           "curves": curves.to_dict()}
    atomic_write_text(spec.run_dir / DIAG_JSON, json.dumps(rec, indent=2) + "\n")
    return rec


def _mean_se(x: np.ndarray, own_se: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and its standard error over axis 0 (ddof 1); with one row, own_se."""
    n = x.shape[0]
    if n > 1:
        return x.mean(0), x.std(0, ddof=1) / math.sqrt(n)
    return x[0], (own_se[0] if own_se is not None else np.full(x.shape[1:], np.nan))


def _time_avg_log10(mean: np.ndarray) -> tuple[float, int]:
    pos = mean > 0
    val = float(np.log10(mean[pos]).mean()) if pos.any() else float("nan")
    return val, int((~pos).sum())


def aggregate_sweep(records: dict[float, list[dict[str, Any]]]) -> dict[str, Any]:
    """Aggregate per-run diagnostics records (lambda -> one `sweep_diagnostics.json` dict per
    seed; lambda 0.0 is the baseline) into, per lambda: for each curve (r_FP, r_DSM, jac_fro) the
    per-t mean and standard error over seeds, and the time average of log10 of each run's curve
    with its mean and standard error over seeds (module docstring). Lambdas without records are
    left out.

    Raises:
        ValueError: records of one lambda on different t grids.
    """
    out: dict[str, Any] = {}
    for lam in sorted(records):
        recs = records[lam]
        if not recs:
            continue
        entry: dict[str, Any] = {"lam": lam, "n_seeds": len(recs)}
        for name in CURVES:
            rows = [r["curves"][name] for r in recs]
            t = np.array([p["t"] for p in rows[0]])
            if any(not np.allclose([p["t"] for p in rw], t, rtol=1e-6) for rw in rows):
                raise ValueError(f"lambda {lam}: runs with different t grids")
            m = np.array([[p["mean"] for p in rw] for rw in rows])
            se = np.array([[p["se"] for p in rw] for rw in rows])
            mean, sem = _mean_se(m, se)
            logs = [_time_avg_log10(row) for row in m]
            lv = np.array([v for v, _ in logs])
            lmean, lse = _mean_se(lv[:, None])
            entry[name] = {
                "t": t.tolist(), "mean": mean.tolist(), "se": sem.tolist(),
                "per_seed_time_avg_log10": lv.tolist(),
                "time_avg_log10": float(lmean[0]),
                "time_avg_log10_se": float(lse[0]),
                "n_nonpositive": int(sum(k for _, k in logs)),
            }
        out[f"{lam:g}"] = entry
    return out


def plot_sweep(agg: dict[str, Any], path: str | Path, penalty: str) -> Path:
    """Fig. 9-style figure, written atomically: (a) r_FP(t) per lambda (mean over seeds, +-1 se
    band; baseline dashed), (b) r_FP(t; lambda) / r_FP(t; baseline) (when a baseline exists),
    (c) the time average of log10 r_FP against lambda with +-1 se error bars over seeds.

    Raises:
        ValueError: nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lams = [e for e in agg.values() if e["lam"] > 0]
    base = next((e for e in agg.values() if e["lam"] == 0), None)
    if not lams:
        raise ValueError("no penalised runs to plot")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    cmap = plt.get_cmap("viridis")
    colours = [cmap(i / max(1, len(lams) - 1)) for i in range(len(lams))]
    ax = axes[0]
    series = ([(base, "k")] if base is not None else []) + list(zip(lams, colours))
    for e, c in series:
        r = e["r_FP"]
        t, m, s = (np.array(r[k]) for k in ("t", "mean", "se"))
        label = "baseline (none)" if e["lam"] == 0 else f"{penalty}, λ={e['lam']:g}"
        ax.plot(t, m, marker="o", ms=3, color=c, ls="--" if e["lam"] == 0 else "-",
                label=f"{label} ({e['n_seeds']} seeds)")
        ax.fill_between(t, m - s, m + s, color=c, alpha=0.15)
    ax.set_xscale("log")
    vals = np.concatenate([np.array(e["r_FP"]["mean"]) for e in agg.values()])
    if (vals <= 0).any():
        ax.set_yscale("symlog", linthresh=float(np.abs(vals[vals > 0]).min(initial=1.0)))
    else:
        ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_title("r_FP(t) = E||eps||^2 / D, mean ± se over seeds", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    if base is not None:
        b = np.array(base["r_FP"]["mean"])
        for e, c in zip(lams, colours):
            ratio = np.array(e["r_FP"]["mean"]) / b
            ax.plot(base["r_FP"]["t"], ratio, marker="o", ms=3, color=c, label=f"λ={e['lam']:g}")
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_title("r_FP(t; λ) / r_FP(t; baseline)", fontsize=10)
    else:
        ax.set_axis_off()
        ax.set_title("(no baseline)", fontsize=10)
    ax.set_xlabel("t")
    ax = axes[2]
    x = np.array([e["lam"] for e in lams])
    y = np.array([e["r_FP"]["time_avg_log10"] for e in lams])
    yerr = np.array([e["r_FP"]["time_avg_log10_se"] for e in lams])
    ax.errorbar(x, y, yerr=np.nan_to_num(yerr), marker="o", capsize=3, label=penalty)
    if base is not None:
        bm, bs = base["r_FP"]["time_avg_log10"], base["r_FP"]["time_avg_log10_se"]
        ax.axhline(bm, color="k", ls="--", label="baseline (λ=0)")
        if math.isfinite(bs):
            ax.axhspan(bm - bs, bm + bs, color="k", alpha=0.1)
    ax.set_xscale("log")
    ax.set_xlabel("λ")
    ax.set_title("time average of log10 r_FP(t), ± se over seeds", fontsize=10)
    ax.legend(fontsize=7)
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def sweep_markdown(agg: dict[str, Any], cfg: SweepConfig) -> str:
    """The sweep as a markdown table: per lambda, seeds, and the time averages of log10 r_FP,
    log10 r_DSM and log10 E||J||_F^2/D (mean ± se over seeds)."""
    def cell(c: dict[str, Any]) -> str:
        m, s = c["time_avg_log10"], c["time_avg_log10_se"]
        txt = f"{m:.3f}" if math.isfinite(m) else "n/a"
        if math.isfinite(s):
            txt += f" ± {s:.3f}"
        if c["n_nonpositive"]:
            txt += f" ({c['n_nonpositive']} pts <= 0 left out)"
        return txt

    lines = [
        f"# r_FP against lambda ({cfg.penalty} penalty, preset {cfg.preset})", "",
        f"{cfg.seeds} seed(s) per lambda; diagnostics on {cfg.n_points} noised test images at "
        f"each of {cfg.n_t} log-spaced t in [{cfg.t_lo:g}, {cfg.t_hi:g}] (the same draws for "
        "every run). Time averages over the grid of log10 of each curve; ± is the standard "
        "error over seeds (none for one seed).", "",
        "| lambda | seeds | mean_t log10 r_FP | mean_t log10 r_DSM | mean_t log10 E‖J‖²/D |",
        "|---|---|---|---|---|",
    ]
    for e in agg.values():
        lam = "0 (baseline)" if e["lam"] == 0 else f"{e['lam']:g}"
        lines.append(f"| {lam} | {e['n_seeds']} | " + " | ".join(
            cell(e[k]) for k in CURVES) + " |")
    return "\n".join(lines) + "\n"


def run_lambda_sweep(
    cfg: SweepConfig,
    out: str | Path,
    *,
    images: Tensor | None = None,
    test_images: Tensor | None = None,
    data_dir: str | Path | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Train (or reuse) every run of the sweep, compute (or reuse) its diagnostics, and write
    lambda_sweep.json / .md / _<penalty>.png under ``out``.

    images: training images (N, 1, 28, 28) in [0, 1] (default: the preset's MNIST digits);
    test_images: the x0 of the diagnostics (default: the 10,000 MNIST test images). Cost:
    (len(lams) + baseline) x seeds trainings and diagnostics.

    Raises:
        ValueError: ``out`` not a (matching) sweep directory, and what training and the
            diagnostics raise. FileNotFoundError: no MNIST cache. NonFiniteLossError: a
            diverged run.
    """
    say = echo if echo is not None else (lambda _m: None)
    out = Path(out)
    check_sweep_dir(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_JSON, json.dumps(cfg.to_dict(), indent=2) + "\n")
    runs = plan_sweep(cfg, out)
    records: dict[float, list[dict[str, Any]]] = {}
    for i, r in enumerate(runs, 1):
        sp = r.spec
        tag = f"[{i}/{len(runs)}] {sp.loss} lambda {r.lam:g} seed {sp.seed}"
        if _training_done(sp):
            say(f"{tag}: training finished earlier, reused")
        else:
            (sp.run_dir / DIAG_JSON).unlink(missing_ok=True)
            say(f"{tag}: training ({sp.run.train.epochs} epochs) -> {sp.run_dir}")
            how = train_one(sp, images=images, data_dir=data_dir, progress=progress)
            say(f"{tag}: training done ({how})")
        rec = _diag_done(cfg, sp)
        if rec is not None:
            say(f"{tag}: diagnostics with these settings exist, reused")
        else:
            if test_images is None:
                from scorefpe.data.mnist import mnist_tensor

                test_images, _ = mnist_tensor("test", data_dir=data_dir)
            say(f"{tag}: diagnostics ({cfg.n_t} t x {cfg.n_points} points)")
            rec = _run_diag(cfg, sp, test_images)
        records.setdefault(r.lam, []).append(rec)
    agg = aggregate_sweep(records)
    paths = {"json": out / RESULT_JSON, "md": out / RESULT_MD,
             "png": out / f"lambda_sweep_{cfg.penalty}.png"}
    atomic_write_text(paths["json"], json.dumps(
        {"config": cfg.to_dict(), "lambdas": agg}, indent=2) + "\n")
    atomic_write_text(paths["md"], sweep_markdown(agg, cfg))
    plot_sweep(agg, paths["png"], cfg.penalty)
    return paths
