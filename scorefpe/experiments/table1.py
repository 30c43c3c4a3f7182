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
file; each run's eval.json and the tables are written before the next run starts. The std over
seeds is the sample standard deviation (ddof = 1); with one seed it is left out (the cell shows
the mean alone).

Each penalty has its own lambda (`Table1Config.lams`, the preset's by default), printed in its
row. Next to the means, every penalty is compared with the `none` baseline paired by seed
(`significance`: paired t-test, exact sign-flip test and bootstrap interval of the mean
difference, from `scorefpe.experiments.significance`).
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

from scorefpe._util import atomic_output, atomic_write_text
from scorefpe.evaluation.run_eval import EVAL_JSON, EvalConfig, SampleConfig

Tensor = torch.Tensor

LOSSES: tuple[str, ...] = ("none", "fp", "sn", "jac", "div")
PENALTIES: tuple[str, ...] = LOSSES[1:]  # the losses with a weight lambda
BASELINE = "none"
EXPERIMENT_JSON = "experiment.json"
TRAIN_MARKER = "table1_train.json"
TABLE_MD = "table1.md"
TABLE_CSV = "table1.csv"
SAMPLES_PNG = "table1_samples.png"
SAMPLE_SEED = 0  # the seed whose samples table1_samples.png shows for every loss
LAM_DEFAULT = 1e-3  # the training CLI's default; the 2026 paper states no lambda
# Metrics compared against the baseline by the paired tests (time per epoch is a cost, not an
# outcome of the seed's draws).
SIGNIFICANCE_METRICS: tuple[str, ...] = ("fid", "density", "coverage", "entropy_nats", "nll_bpd")

# The columns of Table I: (key, header, how to read the value from an eval.json dict).
METRICS: tuple[tuple[str, str], ...] = (
    ("fid", "FID"),
    ("density", "density"),
    ("coverage", "coverage"),
    ("entropy_nats", "entropy (nats)"),
    ("nll_bpd", "NLL (bits/dim)"),
    ("time_per_epoch_s", "time/epoch (s, median)"),
)

__all__ = [
    "EXPERIMENT_PRESETS",
    "ExperimentPreset",
    "LOSSES",
    "METRICS",
    "PENALTIES",
    "RunSpec",
    "Table1Config",
    "aggregate",
    "check_experiment_dir",
    "eval_metrics",
    "parse_lams",
    "parse_sub_batches",
    "plan_runs",
    "run_table1",
    "significance",
    "significance_markdown",
    "table_csv",
    "table_markdown",
]


@dataclass(frozen=True)
class ExperimentPreset:
    """Training preset of `mnist_run` with overrides, default seeds, and evaluation settings.

    n_reference: real test images used for FID/density/coverage (None: all 10,000).
    lams: the default penalty weight of each penalty (fp, sn, jac, div); a penalty not named
        gets LAM_DEFAULT. source: where the values come from (printed in the table's header).
    sub_batches: penalty -> sub-batch size of its estimator (`PenaltyConfig.sub_batch`: P on
        the first k samples of each batch, variance x B/k); a penalty not named uses the batch.
    """

    train_preset: str
    train_overrides: tuple[tuple[str, Any], ...]
    seeds: int
    eval: EvalConfig
    n_reference: int | None
    lams: tuple[tuple[str, float], ...] = ()
    source: str = ""
    sub_batches: tuple[tuple[str, int | None], ...] = ()


# Each penalty's weight at the cpu scale: the best FID of the one-seed lambda scan
# (docs/results/mnist_cpu_tradeoff.md: sn, jac, div in section 5, three levels a decade apart
# each; fp in section 6: without gradient clipping every lambda from 1e-8 to 1e-6 wrecked
# training, with the cpu preset's clip at 1000 1e-8 trains (FID at the baseline's) and 1e-7 is
# worse (FID 324).
CPU_LAMS: tuple[tuple[str, float], ...] = (("fp", 1e-8), ("sn", 1e-2), ("jac", 1e-4),
                                           ("div", 1e-7))

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
    # Issue 14: the `cpu` training preset (all 60,000 digits, width 0.25, 23 epochs: 15 minutes
    # of training on 2 CPU cores), 3 seeds, 10,000 samples against the 10,000 test digits by the
    # reverse-diffusion predictor without corrector at 100 steps (100 NFE; 5x the NFE bought 4 %
    # in FID: docs/results/mnist_cpu_tradeoff.md). Lambdas: CPU_LAMS.
    "cpu": ExperimentPreset(
        train_preset="cpu",
        train_overrides=(),
        seeds=3,
        eval=EvalConfig(sample=SampleConfig(n=10_000, sampler="rd", steps=100, batch_size=500),
                        nll_n=16, diag_points=32, diag_n_t=9),
        n_reference=None,
        lams=CPU_LAMS,
        source="docs/results/mnist_cpu_tradeoff.md (training and sampler; the lambdas from "
               "its one-seed lambda scans, sections 5 and 6; the clip at 1000 from section 6)",
        # The full-batch FP penalty costs 7.7x a DSM step on this CPU, 2.1x on 8 of the 64
        # samples (docs/results/bench_penalties_cpu.md): 3 seeds of Table I fit the machine
        # only with the sub-batch, whose variance price the page reports.
        sub_batches=(("fp", 8),),
    ),
    # The 2026 paper's set-up for a GPU (scripts/gpu_table1.sh runs it in resumable chunks):
    # 60,000 digits, width 1, batch 32, 200 epochs, 3 seeds, 10,000 samples by PC (500 steps,
    # 1,000 NFE) against the 10,000 test digits. The paper states no lambda: the cpu preset's.
    "paper": ExperimentPreset(
        train_preset="paper",
        train_overrides=(),
        seeds=3,
        eval=EvalConfig(sample=SampleConfig(n=10_000, sampler="pc", steps=500, batch_size=1000),
                        nll_n=256, diag_points=64, diag_n_t=9),
        n_reference=None,
        lams=CPU_LAMS,
        source="the 2026 paper (Sec. IV); lambdas: the cpu preset's (the paper states none)",
    ),
}


def parse_lams(spec: str) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    """Parse a --lam value: one number (every penalty) or ``name=value`` pairs separated by
    commas (``fp=1e-6,sn=1e-2``; penalties not named keep the preset's weight).

    Returns (lam for every penalty or None, ((penalty, lam), ...)).

    Raises:
        ValueError: an unknown penalty name (naming the valid ones), a repeated name, a value
            that is not a number, not finite, or not > 0.
    """
    def num(name: str, text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"lambda of {name} must be a number, got {text!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"lambda of {name} must be positive and finite, got {text!r}")
        return v

    text = spec.strip()
    if "=" not in text:
        return num("every penalty", text), ()
    pairs: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"expected name=value pairs like fp=1e-6,sn=1e-2, got {item!r}")
        if name not in PENALTIES:
            raise ValueError(f"unknown penalty {name!r} in --lam; choose among {list(PENALTIES)}")
        if name in pairs:
            raise ValueError(f"penalty {name!r} is given twice in --lam")
        pairs[name] = num(name, value.strip())
    if not pairs:
        raise ValueError(f"expected a number or name=value pairs, got {spec!r}")
    return None, tuple(pairs.items())


def parse_sub_batches(spec: str) -> tuple[tuple[str, int | None], ...]:
    """Parse a --sub-batch value: ``name=k`` pairs separated by commas (``fp=8,div=16``; ``fp=all``
    estimates fp on the whole batch; penalties not named use the whole batch).

    Raises:
        ValueError: an unknown penalty name (naming the valid ones), a repeated name, a value
            that is not a positive integer or ``all``.
    """
    pairs: dict[str, int | None] = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        name, sep, value = (v.strip() for v in item.partition("="))
        if not sep:
            raise ValueError(f"expected name=k pairs like fp=8, got {item!r}")
        if name not in PENALTIES:
            raise ValueError(f"unknown penalty {name!r} in --sub-batch; choose among "
                             f"{list(PENALTIES)}")
        if name in pairs:
            raise ValueError(f"penalty {name!r} is given twice in --sub-batch")
        if value == "all":
            pairs[name] = None
            continue
        try:
            k = int(value)
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"sub-batch of {name} must be a positive integer or 'all', "
                             f"got {value!r}")
        pairs[name] = k
    if not pairs:
        raise ValueError(f"expected name=k pairs like fp=8, got {spec!r}")
    return tuple(pairs.items())


@dataclass(frozen=True)
class Table1Config:
    """One Table I experiment: preset, number of seeds (0..seeds-1), epochs, width and n_train
    (None: the preset's), penalty weights, sample count and sampler steps (None: the preset's),
    the losses, and extra `mnist_run` overrides / `EvalConfig` fields on top of the preset.
    only: the losses this call trains and evaluates (None: all); not part of the experiment's
    identity, so calls with disjoint ``only`` can share one directory (one per CPU core).

    The weight of penalty p is ``dict(lams)[p]`` if given, else ``lam`` if given, else the
    preset's (`ExperimentPreset.lams`, then LAM_DEFAULT); `lam_of` resolves it. "none" has 0.

    Raises:
        ValueError: unknown preset (naming the valid ones), seeds/epochs/n_train/n_samples/steps
            < 1, width not > 0, a lambda not finite and > 0, a lams name that is not a penalty.
    """

    preset: str = "tiny"
    seeds: int | None = None
    epochs: int | None = None
    lam: float | None = None
    n_samples: int | None = None
    steps: int | None = None
    losses: tuple[str, ...] = LOSSES
    extra_train: tuple[tuple[str, Any], ...] = field(default=())
    extra_eval: tuple[tuple[str, Any], ...] = field(default=())
    lams: tuple[tuple[str, float], ...] = field(default=())
    width: float | None = None
    n_train: int | None = None
    sub_batches: tuple[tuple[str, int | None], ...] | None = None
    only: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.preset not in EXPERIMENT_PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; choose one of {sorted(EXPERIMENT_PRESETS)}")
        for name in ("seeds", "epochs", "n_samples", "steps", "n_train"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.width is not None and not (
                isinstance(self.width, (int, float)) and math.isfinite(self.width)
                and self.width > 0):
            raise ValueError(f"width must be positive and finite, got {self.width!r}")
        named = [("lam", self.lam)] if self.lam is not None else []
        for name, v in named + [(f"lambda of {k}", v) for k, v in self.lams]:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive and finite, got {v!r}")
        bad_lams = [k for k, _ in self.lams if k not in PENALTIES]
        if bad_lams:
            raise ValueError(f"unknown penalties {bad_lams!r} in lams; choose among "
                             f"{list(PENALTIES)}")
        for k, v in self.sub_batches or ():
            if k not in PENALTIES:
                raise ValueError(f"unknown penalty {k!r} in sub_batches; choose among "
                                 f"{list(PENALTIES)}")
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"sub-batch of {k} must be a positive integer or None (the "
                                 f"whole batch), got {v!r}")
        bad = [x for x in self.losses if x not in LOSSES]
        if bad or not self.losses:
            raise ValueError(f"unknown losses {bad!r}; choose among {list(LOSSES)}")
        if self.only is not None:
            bad = [x for x in self.only if x not in self.losses]
            if bad or not self.only:
                raise ValueError(f"losses {bad!r} to run are not in the experiment; choose "
                                 f"among {list(self.losses)}")

    def lam_of(self, loss: str) -> float:
        """The penalty weight lambda of ``loss`` (0 for none); see the class docstring."""
        if loss == BASELINE:
            return 0.0
        given = dict(self.lams)
        if loss in given:
            return float(given[loss])
        if self.lam is not None:
            return float(self.lam)
        return float(dict(self.spec.lams).get(loss, LAM_DEFAULT))

    def sub_batch_of(self, loss: str) -> int | None:
        """The sub-batch of ``loss``'s penalty estimator (None: the whole batch): ``sub_batches``
        if given (a penalty it does not name uses the whole batch), else the preset's."""
        given = self.sub_batches if self.sub_batches is not None else self.spec.sub_batches
        return dict(given).get(loss)

    @property
    def resolved_lams(self) -> dict[str, float]:
        """loss -> lambda for every loss of the experiment (none: 0)."""
        return {loss: self.lam_of(loss) for loss in self.losses}

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
            "lams": self.resolved_lams, "width": self.width, "n_train": self.n_train,
            "sub_batches": {loss: self.sub_batch_of(loss) for loss in self.losses
                            if self.sub_batch_of(loss) is not None},
            "n_samples": self.n_samples, "steps": self.steps,
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
    (lambda = cfg.lam_of(loss): 0 for none)."""
    from scorefpe.training import mnist_run

    out = Path(out)
    specs = []
    for loss in cfg.losses:
        for seed in range(cfg.n_seeds):
            kw: dict[str, Any] = dict(cfg.spec.train_overrides)
            kw.update(dict(cfg.extra_train))
            kw["seed"] = seed
            for name in ("epochs", "width", "n_train"):
                if getattr(cfg, name) is not None:
                    kw[name] = getattr(cfg, name)
            if cfg.sub_batch_of(loss) is not None:
                kw["sub_batch"] = cfg.sub_batch_of(loss)
            run = mnist_run(cfg.spec.train_preset, penalty=loss, lam=cfg.lam_of(loss), **kw)
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
        "time_per_epoch_s": tpe.get("median_s", tpe.get("mean_s")),
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


def _fmt_lam(v: float) -> str:
    return "0" if v == 0 else format(v, "g")


def table_markdown(agg: dict[str, dict[str, Any]], n_seeds: int,
                   lams: dict[str, float] | None = None) -> str:
    """Table I as a markdown table: one row per loss, mean ± std over seeds, and the ratio of
    its mean time per epoch to the baseline's ("x none"; n/a without a baseline time); with
    ``lams`` (loss -> lambda) a lambda column after the loss."""
    lam_head = "lambda | " if lams is not None else ""
    head = (f"| loss | {lam_head}seeds | " + " | ".join(h for _, h in METRICS)
            + f" | time vs {BASELINE} |")
    lines = [head, "|" + "---|" * (len(METRICS) + 3 + (lams is not None))]
    base_t = agg.get(BASELINE, {}).get("time_per_epoch_s", {}).get("mean")
    for loss, row in agg.items():
        n = max((row[k]["n"] for k, _ in METRICS), default=0)
        lam = f"{_fmt_lam(lams[loss])} | " if lams is not None else ""
        t = row["time_per_epoch_s"]["mean"]
        ratio = "n/a" if t is None or not base_t else f"{t / base_t:.3g}x"
        lines.append(f"| {loss} | {lam}{n}/{n_seeds} | "
                     + " | ".join(_cell(row[k]) for k, _ in METRICS) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def significance(per_seed: dict[str, dict[int, dict[str, float | None]]], *,
                 baseline: str = BASELINE, n_boot: int = 10_000,
                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired comparison of every loss with the baseline, per metric of SIGNIFICANCE_METRICS.

    per_seed: loss -> seed -> `eval_metrics` dict. For a loss L and metric m the pairs are the
    seeds where both L and the baseline have a value of m; d_i = m(L, seed i) - m(baseline,
    seed i), and `scorefpe.experiments.significance.paired_comparison` gives the paired t-test,
    the exact sign-flip test and the bootstrap interval of mean(d).

    Returns loss -> metric -> `PairedComparison` (None when fewer than 2 seeds pair up), for
    every loss but the baseline; {} when the baseline has no runs.
    """
    from scorefpe.experiments.significance import paired_comparison

    base = per_seed.get(baseline)
    if not base:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for loss, runs in per_seed.items():
        if loss == baseline:
            continue
        out[loss] = {}
        for key in SIGNIFICANCE_METRICS:
            seeds = sorted(s for s in runs if s in base and runs[s].get(key) is not None
                           and base[s].get(key) is not None)
            if len(seeds) < 2:
                out[loss][key] = None
                continue
            out[loss][key] = paired_comparison([runs[s][key] for s in seeds],
                                               [base[s][key] for s in seeds],
                                               n_boot=n_boot, seed=seed)
    return out


def _p(v: float) -> str:
    return "n/a" if not math.isfinite(v) else format(v, ".2g")


def significance_markdown(sig: dict[str, dict[str, Any]], lams: dict[str, float] | None = None,
                          baseline: str = BASELINE) -> str:
    """The paired differences as a markdown table: one row per penalty, per metric the mean
    difference against the baseline with the t-test p and the sign-flip p, plus a note on the
    smallest sign-flip p the number of seeds allows."""
    heads = dict(METRICS)
    lines = ["| loss | " + ("lambda | " if lams is not None else "")
             + " | ".join(f"Δ {heads[k]} (p_t, p_sf)" for k in SIGNIFICANCE_METRICS) + " |",
             "|" + "---|" * (len(SIGNIFICANCE_METRICS) + 1 + (lams is not None))]
    ns: set[int] = set()
    for loss, row in sig.items():
        cells = []
        for key in SIGNIFICANCE_METRICS:
            c = row[key]
            if c is None:
                cells.append("n/a (< 2 paired seeds)")
                continue
            ns.add(c.n)
            cells.append(f"{c.mean_diff:+.4g} ({_p(c.p_ttest)}, {_p(c.p_signflip)})")
        lam = f"{_fmt_lam(lams[loss])} | " if lams is not None else ""
        lines.append(f"| {loss} | {lam}" + " | ".join(cells) + " |")
    notes = [f"With n = {n} paired seeds the sign-flip test cannot go below p = 2/2^{n} = "
             f"{2.0 / 2 ** n:.3g}." for n in sorted(ns)]
    return "\n".join(lines) + "\n" + ("\n" + " ".join(notes) + "\n" if notes else "")


SIGNIFICANCE_HEADER = (
    "Significance: for each penalty and metric, Δ = mean over seeds of (penalty − {base}) with "
    "the runs paired by seed (same initialisation, data order and sampler noise). p_t: "
    "two-sided paired t-test (Student, n − 1 degrees of freedom; assumes normal differences). "
    "p_sf: exact two-sided sign-flip (permutation) test over the 2^n sign patterns of the "
    "differences (distribution-free; its smallest attainable p is 2/2^n, so with 3 seeds it "
    "cannot go below p = 0.25 and cannot reject at 5 %). table1.csv also holds the 95 % "
    "percentile bootstrap interval of Δ (resampling seeds).")


def table_csv(agg: dict[str, dict[str, Any]], lams: dict[str, float] | None = None,
              sig: dict[str, dict[str, Any]] | None = None) -> str:
    """Table I as CSV: loss, (lam), then <metric>_mean, <metric>_std, <metric>_n for each
    metric; with ``sig`` also <m>_diff, <m>_p_t, <m>_p_signflip, <m>_ci_low, <m>_ci_high for
    each metric of SIGNIFICANCE_METRICS (empty for the baseline and where not computable)."""
    sig_cols = ("diff", "p_t", "p_signflip", "ci_low", "ci_high")
    sig_attr = ("mean_diff", "p_ttest", "p_signflip", "ci_low", "ci_high")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["loss"] + (["lam"] if lams is not None else [])
    head += [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std", "n")]
    if sig is not None:
        head += [f"{k}_{c}" for k in SIGNIFICANCE_METRICS for c in sig_cols]
    w.writerow(head)
    for loss, row in agg.items():
        line: list[Any] = [loss] + ([lams[loss]] if lams is not None else [])
        line += ["" if row[k][s] is None else row[k][s]
                 for k, _ in METRICS for s in ("mean", "std", "n")]
        if sig is not None:
            for k in SIGNIFICANCE_METRICS:
                c = sig.get(loss, {}).get(k)
                line += ["" if c is None else getattr(c, a) for a in sig_attr]
        w.writerow(line)
    return buf.getvalue()


def collect_values(cfg: Table1Config,
                   out: str | Path) -> dict[str, dict[int, dict[str, float | None]]]:
    """loss -> seed -> `eval_metrics` of every planned run under ``out`` that has an eval.json
    and was trained with the experiment's settings (its table1_train.json matches the planned
    run): a run trained under other settings, e.g. before a preset changed, is left out rather
    than reported under the settings the table's header names."""
    from scorefpe.evaluation.run_eval import time_per_epoch

    values: dict[str, dict[int, dict[str, float | None]]] = {loss: {} for loss in cfg.losses}
    for sp in plan_runs(cfg, out):
        p = sp.run_dir / EVAL_JSON
        if p.is_file() and _training_done(sp):
            rec = eval_metrics(json.loads(p.read_text()))
            if (sp.run_dir / "metrics.jsonl").is_file():
                # From the training log itself: the median, also for runs evaluated before
                # eval.json recorded it.
                rec["time_per_epoch_s"] = time_per_epoch(sp.run_dir)["median_s"]
            values[sp.loss][sp.seed] = rec
    return values


def write_tables(cfg: Table1Config, out: str | Path) -> dict[str, Path]:
    """Collect the eval.json of every planned run under ``out`` and write table1.md / .csv:
    mean ± std over seeds with each loss's lambda, and the paired comparison of every penalty
    with the baseline (`significance`).

    Runs without an eval.json are left out of the mean (the seeds column shows how many count).
    """
    out = Path(out)
    per_seed = collect_values(cfg, out)
    agg = aggregate({loss: list(v.values()) for loss, v in per_seed.items()})
    sig = significance(per_seed) if BASELINE in cfg.losses else {}
    lams = cfg.resolved_lams
    ecfg = cfg.eval_config()
    s = ecfg.sample
    run0 = plan_runs(cfg, out)[0].run
    src = f" Preset values from {cfg.spec.source}." if cfg.spec.source else ""
    subs = {loss: cfg.sub_batch_of(loss) for loss in cfg.losses
            if cfg.sub_batch_of(loss) is not None}
    sub_txt = (" Penalties estimated on a sub-batch (unbiased, variance x batch/k): "
               + ", ".join(f"{k} on {v} of {run0.train.batch_size} samples per batch"
                           for k, v in subs.items()) + "." if subs else "")
    digests = sorted({json.loads(p.read_text()).get("lenet_weights_sha256") or "not recorded"
                      for p in out.glob(f"*-s*/{EVAL_JSON}")})
    md = [
        f"# Table I ({cfg.preset} preset): mean ± std over seeds", "",
        f"Training (resolved settings): preset `{cfg.spec.train_preset}`, "
        f"epochs {run0.train.epochs}, batch {run0.train.batch_size}, width {run0.model.width}, "
        f"n_train {run0.n_train or 60000}, lr {run0.train.lr}, EMA {run0.train.ema_decay}, "
        f"{_clip_text(run0.train.grad_clip)}; "
        f"lambda per loss in the lambda column.{sub_txt}{src}",
        f"Evaluation: {s.n} samples by `{s.sampler}` ({s.steps} steps), "
        f"{'all' if cfg.spec.n_reference is None else cfg.spec.n_reference} test images as "
        f"reference, NLL on {ecfg.nll_n} test images. ± is the sample std over seeds (none for "
        "one seed).",
        f"LeNet feature extractor (weights_sha256 of its parameters): {', '.join(digests)}"
        + (" (several: the rows are not comparable)" if len(digests) > 1 else "") + ".", "",
        table_markdown(agg, cfg.n_seeds, lams),
    ]
    if sig:
        md += ["## Paired differences against `none`", "",
               SIGNIFICANCE_HEADER.format(base=BASELINE), "",
               significance_markdown(sig, lams)]
    paths = {"md": out / TABLE_MD, "csv": out / TABLE_CSV}
    fig = write_sample_figure(cfg, out, per_seed)
    if fig is not None:
        paths["samples"] = fig
        md += ["", f"![the first 36 samples of each loss's seed {SAMPLE_SEED}]({fig.name})", ""]
    atomic_write_text(paths["md"], "\n".join(md))
    atomic_write_text(paths["csv"], table_csv(agg, lams, sig if sig else None))
    return paths


def write_sample_figure(cfg: Table1Config, out: str | Path,
                        per_seed: dict[str, dict[int, dict[str, float | None]]] | None = None,
                        *, nrow: int = 6) -> Path | None:
    """OUT/table1_samples.png: the first nrow^2 samples of seed SAMPLE_SEED of every loss that
    has them, one panel per loss titled with its lambda and FID. Seed 0 for every loss rather
    than each loss's best, so the panels are draws of the same kind. None (nothing written)
    when no such run has samples.npy. Cost: reads nrow^2 samples per loss (memory-mapped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scorefpe.evaluation.run_eval import sample_grid

    out = Path(out)
    per_seed = collect_values(cfg, out) if per_seed is None else per_seed
    panels = []
    for sp in plan_runs(cfg, out):
        path = sp.run_dir / "samples.npy"
        if sp.seed != SAMPLE_SEED or not path.is_file():
            continue
        fid = per_seed.get(sp.loss, {}).get(sp.seed, {}).get("fid")
        title = (f"{sp.loss} (lambda {_fmt_lam(cfg.lam_of(sp.loss))})\n"
                 + ("FID n/a" if fid is None else f"FID {fid:.4g}"))
        panels.append((title, sample_grid(np.load(path, mmap_mode="r"), nrow)))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), squeeze=False)
    for ax, (title, grid) in zip(axes[0], panels):
        ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    target = out / SAMPLES_PNG
    with atomic_output(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return target


def _duration(seconds: float) -> str:
    """A duration for a progress line: "42 s", "17 min", "3 h 05 min"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def _clip_text(clip: float | None) -> str:
    return "no gradient clipping" if clip is None else f"global gradient norm clipped at {clip:g}"


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

    Each run's eval.json, and the tables with every run finished so far, are written before the
    next run starts, so a stop loses at most the run in progress (which resumes from its last
    checkpoint). progress: a tqdm bar of runs on stderr (runs done / total, ETA from the mean
    measured time of the runs trained or evaluated in this call) above the training loop's own
    bar (step, epoch); echo gets the same ETA in its per-run line.

    images: training images (N, 1, 28, 28) in [0, 1] (default: the cached MNIST digits of the
    preset). reference / lenet: passed to `evaluate_run` (default: the MNIST test images,
    truncated to the preset's n_reference, and the shipped LeNet). echo: called with one
    progress line per stage. Cost: 5 x seeds trainings and evaluations.

    Raises:
        ValueError: ``out`` is not an experiment directory, an experiment.json with other
            settings, or what training/evaluation raise for bad settings.
        FileNotFoundError: no MNIST cache / LeNet weights.
    """
    import time

    from scorefpe.evaluation.run_eval import collect_report, evaluate_run, write_eval

    say = echo if echo is not None else (lambda _m: None)
    out = Path(out)
    check_experiment_dir(out)
    marker = out / EXPERIMENT_JSON
    new = cfg.to_dict()
    if marker.is_file():
        old = json.loads(marker.read_text())
        if "lams" not in old and "lam" in old:  # written before lambdas were per penalty
            old["lams"] = {loss: 0.0 if loss == BASELINE else old["lam"]
                           for loss in old.get("losses", LOSSES)}
        keep = ("preset", "lams", "width", "n_train", "n_samples", "steps", "extra_train",
                "extra_eval", "sub_batches")
        absent = {"extra_train": [], "extra_eval": [], "sub_batches": {}}
        diff = [k for k in keep if old.get(k, absent.get(k)) != new[k]]
        if diff:
            raise ValueError(f"{out} holds an experiment with other settings ({', '.join(diff)}); "
                             "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(new, indent=2, sort_keys=True) + "\n")
    # cfg.only: this call's share of the runs (another call may work on the rest of the same
    # directory at the same time); the tables always cover every loss of the experiment.
    specs = [sp for sp in plan_runs(cfg, out) if cfg.only is None or sp.loss in cfg.only]
    ecfg = cfg.eval_config()
    total = len(specs)
    done = sum(_eval_done(sp, ecfg) for sp in specs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=done, desc="table1 runs", unit="run", position=0,
                   dynamic_ncols=True)
    worked: list[float] = []  # seconds of each run trained or evaluated in this call
    try:
        for i, sp in enumerate(specs, 1):
            tag = f"[{i}/{total}] {sp.loss} seed {sp.seed}"
            if _training_done(sp) and _eval_done(sp, ecfg):
                say(f"{tag}: training finished earlier, reused")
                say(f"{tag}: eval.json with these settings exists, reused")
                continue
            t0 = time.perf_counter()
            if _training_done(sp):
                say(f"{tag}: training finished earlier, reused")
            else:
                say(f"{tag}: training ({sp.run.train.epochs} epochs, lambda "
                    f"{_fmt_lam(sp.run.penalty.lam)}) -> {sp.run_dir}")
                how = train_one(sp, images=images, data_dir=data_dir, progress=progress)
                say(f"{tag}: training done ({how})")
            if reference is None:
                from scorefpe.data.mnist import mnist_tensor

                reference, _ = mnist_tensor("test", data_dir=data_dir, n=cfg.spec.n_reference)
            if lenet is None:
                from scorefpe.metrics.lenet import load_lenet

                lenet = load_lenet()
            say(f"{tag}: evaluating")
            res = evaluate_run(sp.run_dir, ecfg, reference=reference, lenet=lenet,
                               progress=progress, echo=lambda m, t=tag: say(f"{t}:   {m}"))
            write_eval(res, sp.run_dir)
            # The tables after every run: a stop between runs leaves them current.
            write_tables(cfg, out)
            worked.append(time.perf_counter() - t0)
            done += 1
            left = total - done
            eta = sum(worked) / len(worked) * left
            if bar is not None:
                bar.update(1)
                bar.set_postfix(eta=_duration(eta), per_run=_duration(sum(worked) / len(worked)))
            nll = res.nll
            say(f"{tag}: FID {res.fid:.4g}, density {res.density:.3f}, coverage "
                f"{res.coverage:.3f}, entropy {res.entropy_nats:.3f}, NLL "
                f"{'n/a' if nll is None else format(nll['bpd'], '.3f')} bits/dim "
                f"({res.seconds:.1f} s); {done}/{total} runs done, {left} left, ETA "
                f"{_duration(eta)} (mean {sum(worked) / len(worked):.0f} s per run measured)")
    finally:
        if bar is not None:
            bar.close()
    paths = write_tables(cfg, out)
    paths["report"] = out / "report.md"
    atomic_write_text(paths["report"], collect_report(out))
    if (out / "report_diagnostics.png").is_file():
        paths["figure"] = out / "report_diagnostics.png"
    return paths
