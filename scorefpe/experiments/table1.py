"""Table I of the 2026 paper: every loss (none, fp, sn, jac, div) x seed, trained, evaluated,
tabulated as mean +- std over seeds.

An experiment directory holds ``experiment.json`` (the settings), one run directory per
(loss, seed) named ``<loss>-s<seed>`` (what `train_mnist` writes, plus the evaluation files of
`evaluate_run`), and the tables ``table1.md`` / ``table1.csv`` with ``report.md`` and its
diagnostics figure. Every step is resumable:

- a run whose ``table1_train.json`` marker records the same training settings is not trained
  again; a run with a checkpoint but no (or a different) marker is resumed by the training
  loop's own exact resume (epochs may grow between calls);
- a run whose ``eval.json`` records the same `EvalConfig` (and was written after the marker)
  is not evaluated again; samples are reused by `load_or_sample` when they match.

Files are written atomically, so an interruption at any moment leaves either the old or the new
file. The std over seeds is the sample standard deviation (ddof = 1); with one seed it is
left out (the cell shows the mean alone).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from scorefpe._util import atomic_write_text
from scorefpe.evaluation.run_eval import EVAL_JSON, EvalConfig, SampleConfig

Tensor = torch.Tensor

LOSSES: tuple[str, ...] = ("none", "fp", "sn", "jac", "div")
EXPERIMENT_JSON = "experiment.json"
TRAIN_MARKER = "table1_train.json"
TABLE_MD = "table1.md"
TABLE_CSV = "table1.csv"
LAM_DEFAULT = 1e-3  # the training CLI's default; the 2026 paper states no lambda

# The columns of Table I: (key, header, how to read the value from an eval.json dict).
METRICS: tuple[tuple[str, str], ...] = (
    ("fid", "FID"),
    ("density", "density"),
    ("coverage", "coverage"),
    ("entropy_nats", "entropy (nats)"),
    ("nll_bpd", "NLL (bits/dim)"),
    ("time_per_epoch_s", "time/epoch (s)"),
)

__all__ = [
    "EXPERIMENT_PRESETS",
    "ExperimentPreset",
    "LOSSES",
    "METRICS",
    "RunSpec",
    "Table1Config",
    "aggregate",
    "check_experiment_dir",
    "eval_metrics",
    "plan_runs",
    "run_table1",
    "table_csv",
    "table_markdown",
]


@dataclass(frozen=True)
class ExperimentPreset:
    """Training preset of `mnist_run` with overrides, default seeds, and evaluation settings.

    n_reference: real test images used for FID/density/coverage (None: all 10,000).
    """

    train_preset: str
    train_overrides: tuple[tuple[str, Any], ...]
    seeds: int
    eval: EvalConfig
    n_reference: int | None


EXPERIMENT_PRESETS: dict[str, ExperimentPreset] = {
    # The smoke training preset (4,096 digits, width 0.25, 3 epochs) and an evaluation at the
    # sizes of docs/results/mnist_eval_smoke.md.
    "smoke": ExperimentPreset(
        train_preset="smoke",
        train_overrides=(),
        seeds=3,
        eval=EvalConfig(sample=SampleConfig(n=1000, sampler="pc", steps=100), nll_n=16,
                        diag_points=16, diag_n_t=7),
        n_reference=None,
    ),
    # A few minutes for the whole table on 2 shared CPU cores: a pipeline check only.
    "tiny": ExperimentPreset(
        train_preset="smoke",
        train_overrides=(("n_train", 2048), ("epochs", 2), ("width", 0.25),
                         ("checkpoint_every", 16), ("log_every", 4)),
        seeds=1,
        eval=EvalConfig(sample=SampleConfig(n=200, sampler="pc", steps=50, batch_size=200),
                        nll_n=4, nll_rtol=1e-4, nll_atol=1e-4, diag_points=8, diag_n_t=5),
        n_reference=2000,
    ),
}


@dataclass(frozen=True)
class Table1Config:
    """One Table I experiment: preset, number of seeds (0..seeds-1), epochs (None: the
    preset's), penalty weight lam, sample count and sampler steps (None: the preset's), the
    losses, and extra `mnist_run` overrides / `EvalConfig` fields on top of the preset.

    Raises:
        ValueError: unknown preset (naming the valid ones), seeds/epochs/n_samples/steps < 1,
            lam not finite and > 0.
    """

    preset: str = "tiny"
    seeds: int | None = None
    epochs: int | None = None
    lam: float = LAM_DEFAULT
    n_samples: int | None = None
    steps: int | None = None
    losses: tuple[str, ...] = LOSSES
    extra_train: tuple[tuple[str, Any], ...] = field(default=())
    extra_eval: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.preset not in EXPERIMENT_PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; choose one of {sorted(EXPERIMENT_PRESETS)}")
        for name in ("seeds", "epochs", "n_samples", "steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"lam must be positive and finite, got {self.lam!r}")
        bad = [x for x in self.losses if x not in LOSSES]
        if bad or not self.losses:
            raise ValueError(f"unknown losses {bad!r}; choose among {list(LOSSES)}")

    @property
    def spec(self) -> ExperimentPreset:
        return EXPERIMENT_PRESETS[self.preset]

    @property
    def n_seeds(self) -> int:
        return self.seeds if self.seeds is not None else self.spec.seeds

    def eval_config(self) -> EvalConfig:
        ev = self.spec.eval
        s = ev.sample
        sample = SampleConfig(
            n=self.n_samples or s.n, sampler=s.sampler, steps=self.steps or s.steps, seed=s.seed,
            batch_size=min(s.batch_size, self.n_samples or s.n), t_min=s.t_min, snr=s.snr)
        d = asdict(ev)
        d["sample"] = sample
        d.update(dict(self.extra_eval))
        return EvalConfig(**d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "table1", "preset": self.preset, "seeds": self.n_seeds, "epochs": self.epochs,
            "lam": self.lam, "n_samples": self.n_samples, "steps": self.steps,
            "losses": list(self.losses), "extra_train": [list(kv) for kv in self.extra_train],
            "extra_eval": [list(kv) for kv in self.extra_eval],
        }


@dataclass(frozen=True)
class RunSpec:
    """One cell of the experiment: loss, seed, its run directory and resolved MNISTRun."""

    loss: str
    seed: int
    run_dir: Path
    run: Any  # scorefpe.training.MNISTRun


def plan_runs(cfg: Table1Config, out: str | Path) -> list[RunSpec]:
    """The (loss, seed) runs of the experiment, loss-major, with their resolved configurations
    (lambda = cfg.lam for the penalties, 0 for none)."""
    from scorefpe.training import mnist_run

    out = Path(out)
    specs = []
    for loss in cfg.losses:
        for seed in range(cfg.n_seeds):
            kw: dict[str, Any] = dict(cfg.spec.train_overrides)
            kw.update(dict(cfg.extra_train))
            kw["seed"] = seed
            if cfg.epochs is not None:
                kw["epochs"] = cfg.epochs
            run = mnist_run(cfg.spec.train_preset, penalty=loss,
                            lam=0.0 if loss == "none" else cfg.lam, **kw)
            specs.append(RunSpec(loss, seed, out / f"{loss}-s{seed}", run))
    return specs


def check_experiment_dir(out: str | Path) -> None:
    """Accept a missing or empty directory, or one holding a table1 experiment.json.

    Raises:
        ValueError: ``out`` is a file, or a non-empty directory that is not a table1 experiment.
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    marker = out / EXPERIMENT_JSON
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (json.JSONDecodeError, AttributeError):
            kind = None
        if kind == "table1":
            return
    if any(out.iterdir()):
        raise ValueError(
            f"--out {str(out)!r} exists and is not a table1 experiment directory "
            f"(no {EXPERIMENT_JSON}); choose a new or empty directory")


def _train_record(spec: RunSpec) -> dict[str, Any]:
    return {"run": spec.run.to_dict(), "train": spec.run.train.to_dict()}


def _training_done(spec: RunSpec) -> bool:
    p = spec.run_dir / TRAIN_MARKER
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("settings") == _train_record(spec)
    except (json.JSONDecodeError, AttributeError):
        return False


def _eval_done(spec: RunSpec, ecfg: EvalConfig) -> bool:
    p = spec.run_dir / EVAL_JSON
    if not p.is_file() or not _training_done(spec):
        return False
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return False
    # The JSON round trip turns tuples into lists; compare like with like.
    return rec.get("config") == json.loads(json.dumps(asdict(ecfg)))


def train_one(
    spec: RunSpec, *, images: Tensor | None = None, data_dir: str | Path | None = None,
    progress: bool = False,
) -> str:
    """Train (or resume) one run to completion and write its marker. Returns "fresh" or
    "resumed". Stale samples/eval files of an earlier, shorter training are removed first.

    Raises:
        ValueError: the run finished with more epochs than asked for now; what `train_mnist`
            raises for bad settings.
        NonFiniteLossError: a diverged run.
    """
    from scorefpe.training import train_mnist
    from scorefpe.training.checkpoint import CHECKPOINT_NAME, METRICS_NAME

    d = spec.run_dir
    if (d / TRAIN_MARKER).is_file():
        try:
            done = json.loads((d / TRAIN_MARKER).read_text())["settings"]["train"]["epochs"]
        except (json.JSONDecodeError, KeyError, TypeError):
            done = None
        if isinstance(done, int) and done > spec.run.train.epochs:
            raise ValueError(
                f"{d} was trained for {done} epochs, more than the {spec.run.train.epochs} asked "
                "for; a finished run cannot be shortened, choose another --out")
    for name in (EVAL_JSON, "samples.json", TRAIN_MARKER):
        (d / name).unlink(missing_ok=True)
    resume = (d / CHECKPOINT_NAME).is_file()
    if not resume:
        # Killed before its first checkpoint: step records without a checkpoint are stale.
        (d / METRICS_NAME).unlink(missing_ok=True)
    res = train_mnist(spec.run, d, images=images, data_dir=data_dir, resume=resume,
                      progress=progress)
    if not res.finished:
        raise RuntimeError(f"training of {d} stopped at step {res.step} before finishing")
    atomic_write_text(d / TRAIN_MARKER, json.dumps(
        {"settings": _train_record(spec), "step": res.step}, indent=2, sort_keys=True) + "\n")
    return "resumed" if resume else "fresh"


def eval_metrics(rec: dict[str, Any]) -> dict[str, float | None]:
    """The Table I numbers of one eval.json dict (None where absent, e.g. NLL skipped)."""
    nll = rec.get("nll")
    tpe = rec.get("time_per_epoch") or {}
    return {
        "fid": rec.get("fid"),
        "density": rec.get("density"),
        "coverage": rec.get("coverage"),
        "entropy_nats": rec.get("entropy_nats"),
        "nll_bpd": None if not nll else nll.get("bpd"),
        "time_per_epoch_s": tpe.get("mean_s"),
    }


def aggregate(values: dict[str, list[dict[str, float | None]]]) -> dict[str, dict[str, Any]]:
    """Mean and sample std (ddof = 1) over seeds of each metric, per loss.

    values: loss -> one `eval_metrics` dict per seed. Returns loss -> metric -> {"mean", "std",
    "n"}; None values are left out, mean is None when none remain, std None when n < 2.
    """
    out: dict[str, dict[str, Any]] = {}
    for loss, rows in values.items():
        out[loss] = {}
        for key, _ in METRICS:
            xs = np.array([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
            n = int(xs.size)
            out[loss][key] = {
                "mean": float(xs.mean()) if n else None,
                "std": float(xs.std(ddof=1)) if n > 1 else None,
                "n": n,
            }
    return out


def _cell(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "n/a"
    m = format(s["mean"], ".4g")
    return m if s["std"] is None else f"{m} ± {s['std']:.2g}"


def table_markdown(agg: dict[str, dict[str, Any]], n_seeds: int) -> str:
    """Table I as a markdown table: one row per loss, mean ± std over seeds."""
    head = "| loss | seeds | " + " | ".join(h for _, h in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for loss, row in agg.items():
        n = max((row[k]["n"] for k, _ in METRICS), default=0)
        lines.append(f"| {loss} | {n}/{n_seeds} | " + " | ".join(_cell(row[k]) for k, _ in METRICS)
                     + " |")
    return "\n".join(lines) + "\n"


def table_csv(agg: dict[str, dict[str, Any]]) -> str:
    """Table I as CSV: loss, then <metric>_mean, <metric>_std, <metric>_n for each metric."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["loss"] + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std", "n")])
    for loss, row in agg.items():
        w.writerow([loss] + ["" if row[k][s] is None else row[k][s]
                             for k, _ in METRICS for s in ("mean", "std", "n")])
    return buf.getvalue()


def write_tables(cfg: Table1Config, out: str | Path) -> dict[str, Path]:
    """Collect the eval.json of every planned run under ``out`` and write table1.md / .csv.

    Runs without an eval.json are left out of the mean (the seeds column shows how many count).
    """
    out = Path(out)
    specs = plan_runs(cfg, out)
    values: dict[str, list[dict[str, float | None]]] = {loss: [] for loss in cfg.losses}
    for sp in specs:
        p = sp.run_dir / EVAL_JSON
        if p.is_file():
            values[sp.loss].append(eval_metrics(json.loads(p.read_text())))
    agg = aggregate(values)
    ecfg = cfg.eval_config()
    s = ecfg.sample
    run0 = specs[0].run
    md = "\n".join([
        f"# Table I ({cfg.preset} preset): mean ± std over seeds", "",
        f"Training: preset `{cfg.spec.train_preset}` with {dict(cfg.spec.train_overrides)}, "
        f"epochs {run0.train.epochs}, batch {run0.train.batch_size}, width {run0.model.width}, "
        f"n_train {run0.n_train}, lambda {cfg.lam} for fp/sn/jac/div.",
        f"Evaluation: {s.n} samples by `{s.sampler}` ({s.steps} steps), "
        f"{'all' if cfg.spec.n_reference is None else cfg.spec.n_reference} test images as "
        f"reference, NLL on {ecfg.nll_n} test images. ± is the sample std over seeds (none for "
        "one seed).", "",
        table_markdown(agg, cfg.n_seeds),
    ])
    paths = {"md": out / TABLE_MD, "csv": out / TABLE_CSV}
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["csv"], table_csv(agg))
    return paths


def run_table1(
    cfg: Table1Config,
    out: str | Path,
    *,
    images: Tensor | None = None,
    reference: Tensor | None = None,
    lenet: Any = None,
    data_dir: str | Path | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Train and evaluate every (loss, seed) of ``cfg`` under ``out``, skipping finished work,
    then write table1.md, table1.csv and report.md (with report_diagnostics.png).

    images: training images (N, 1, 28, 28) in [0, 1] (default: the cached MNIST digits of the
    preset). reference / lenet: passed to `evaluate_run` (default: the MNIST test images,
    truncated to the preset's n_reference, and the saved LeNet). echo: called with one progress
    line per stage. Cost: 5 x seeds trainings and evaluations.

    Raises:
        ValueError: ``out`` is not an experiment directory, an experiment.json with other
            settings, or what training/evaluation raise for bad settings.
        FileNotFoundError: no MNIST cache / LeNet weights.
    """
    from scorefpe.evaluation.run_eval import collect_report, evaluate_run, write_eval

    say = echo if echo is not None else (lambda _m: None)
    out = Path(out)
    check_experiment_dir(out)
    marker = out / EXPERIMENT_JSON
    if marker.is_file():
        old = json.loads(marker.read_text())
        keep = ("preset", "lam", "n_samples", "steps", "extra_train", "extra_eval")
        new = cfg.to_dict()
        diff = [k for k in keep if old.get(k, [] if k.startswith("extra") else None) != new[k]]
        if diff:
            raise ValueError(f"{out} holds an experiment with other settings ({', '.join(diff)}); "
                             "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    specs = plan_runs(cfg, out)
    ecfg = cfg.eval_config()
    total = len(specs)
    for i, sp in enumerate(specs, 1):
        tag = f"[{i}/{total}] {sp.loss} seed {sp.seed}"
        if _training_done(sp):
            say(f"{tag}: training finished earlier, reused")
        else:
            say(f"{tag}: training ({sp.run.train.epochs} epochs) -> {sp.run_dir}")
            how = train_one(sp, images=images, data_dir=data_dir, progress=progress)
            say(f"{tag}: training done ({how})")
        if _eval_done(sp, ecfg):
            say(f"{tag}: eval.json with these settings exists, reused")
            continue
        if reference is None:
            from scorefpe.data.mnist import mnist_tensor

            reference, _ = mnist_tensor("test", data_dir=data_dir, n=cfg.spec.n_reference)
        if lenet is None:
            from scorefpe.metrics.lenet import load_lenet

            lenet = load_lenet()
        say(f"{tag}: evaluating")
        res = evaluate_run(sp.run_dir, ecfg, reference=reference, lenet=lenet, progress=progress,
                           echo=lambda m, t=tag: say(f"{t}:   {m}"))
        write_eval(res, sp.run_dir)
        nll = res.nll
        say(f"{tag}: FID {res.fid:.4g}, density {res.density:.3f}, coverage {res.coverage:.3f}, "
            f"entropy {res.entropy_nats:.3f}, NLL "
            f"{'n/a' if nll is None else format(nll['bpd'], '.3f')} bits/dim "
            f"({res.seconds:.1f} s)")
    paths = write_tables(cfg, out)
    paths["report"] = out / "report.md"
    atomic_write_text(paths["report"], collect_report(out))
    if (out / "report_diagnostics.png").is_file():
        paths["figure"] = out / "report_diagnostics.png"
    return paths

