"""`scorefpe experiment table1` (every loss x seed trained, evaluated and tabulated: Table I) and
`scorefpe experiment lambda-sweep` (r_FP against the penalty weight: Fig. 9)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import click

from scorefpe.cli._options import (
    GRAD_CLIP,
    POS_FLOAT,
    old_spelling,
    output_dir,
    parse_floats,
    positive_int,
    threads_option,
)


def _run_experiment(run: Callable[..., dict[str, Path]], tag: str, diverged: str,
                    data_dir: Path | None) -> None:
    """Call ``run(data_dir=..., progress=True, echo=...)``, print its markdown and the files it
    wrote; bad input exits 2, a diverged training exits 1 with ``diverged`` appended."""
    from scorefpe.training.loop import NonFiniteLossError

    if data_dir is not None and not data_dir.is_dir():
        raise click.BadParameter(f"directory {str(data_dir)!r} does not exist",
                                 param_hint="--data-dir")
    try:
        paths = run(data_dir=data_dir, progress=True,
                    echo=lambda m: click.echo(f"[{tag}] {m}", err=True))
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    except NonFiniteLossError as err:
        # Resuming would replay the same draws and diverge again: say so instead of retrying.
        click.echo(f"error: {err}. {diverged}", err=True)
        sys.exit(1)
    click.echo(paths["md"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _lams(ctx: click.Context, param: click.Parameter,
          value: str | None) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    """--lam: one number or name=value pairs (`scorefpe.experiments.table1.parse_lams`)."""
    from scorefpe.experiments.table1 import parse_lams

    if value is None:
        return None, ()
    try:
        return parse_lams(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def _sub_batches(ctx: click.Context, param: click.Parameter,
                 value: str | None) -> tuple[tuple[str, int | None], ...] | None:
    """--sub-batch: name=k pairs (`scorefpe.experiments.table1.parse_sub_batches`)."""
    from scorefpe.experiments.table1 import parse_sub_batches

    if value is None:
        return None
    try:
        return parse_sub_batches(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def _losses(ctx: click.Context, param: click.Parameter,
            value: str | None) -> tuple[str, ...] | None:
    """--losses: comma-separated names among none, fp, sn, jac, div, each at most once."""
    from scorefpe.experiments.table1 import LOSSES

    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in LOSSES]
    if bad or not names:
        raise click.BadParameter(f"unknown losses {bad or [value]!r}; choose among {list(LOSSES)}",
                                 ctx=ctx, param=param)
    if len(set(names)) != len(names):
        raise click.BadParameter(f"a loss is given twice in {value!r}", ctx=ctx, param=param)
    return tuple(names)


@click.group("experiment")
def experiment() -> None:
    """Experiments of the papers, built from train / eval / report."""


@experiment.command("table1")
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=output_dir,
              help="Experiment directory (new, empty, or one from an earlier call to resume).")
@click.option("--preset", type=str, default="smoke", show_default=True,
              help="smoke, tiny (the whole table in a few CPU minutes; both for tests), cpu "
                   "(60,000 digits, 3 seeds, 10,000 samples: docs/results/mnist_cpu_tradeoff.md) "
                   "or paper (the 2026 paper's 200 epochs at width 1: a GPU, "
                   "scripts/gpu_table1.sh).")
@click.option("--seeds", type=int, default=None, callback=positive_int,
              help="Seeds 0..N-1 per loss (default: the preset's, smoke 3, tiny 1, cpu 3).")
@click.option("--epochs", type=int, default=None, callback=positive_int,
              help="Training epochs (default: the preset's).")
@click.option("--width", type=POS_FLOAT, default=None,
              help="U-Net width factor (default: the preset's).")
@click.option("--n-train", type=int, default=None, callback=positive_int,
              help="Train on the first N digits (default: the preset's).")
@click.option("--lam", "lam_spec", type=str, default=None, callback=_lams,
              help="Penalty weight lambda: one number for fp/sn/jac/div, or name=value pairs "
                   "(e.g. fp=1e-6,sn=1e-2; unnamed penalties keep the preset's). Default: the "
                   "preset's (smoke, tiny: 1e-3 each; cpu, paper: fp 1e-8, sn 1e-2, jac 1e-4, "
                   "div 1e-7, from the lambda scans of docs/results/mnist_cpu_tradeoff.md).")
@click.option("--sub-batch", "sub_batches", type=str, default=None, callback=_sub_batches,
              help="Estimate a penalty on the first k samples of each batch (unbiased, variance "
                   "x batch/k, cost about /(batch/k)): name=k pairs, e.g. fp=8; fp=all for the "
                   "whole batch. Default: the preset's (cpu: fp=8; others: the whole batch).")
@click.option("--losses", "only", type=str, default=None, callback=_losses,
              help="Train and evaluate only these losses in this call (comma-separated, e.g. "
                   "none,fp; default: all five). Calls with disjoint --losses on the same --out "
                   "can run at the same time (one per core); the tables list every loss.")
@click.option("--grad-clip", type=GRAD_CLIP, default=None,
              help="Clip the global gradient norm at this value for every loss; inf: no "
                   "clipping (default: the training preset's: cpu 1000, smoke and paper none).")
@click.option("--n-samples", type=int, default=None, callback=positive_int,
              help="Samples per run for the metrics (default: the preset's).")
@click.option("--sampler-steps", "steps", type=int, default=None, callback=positive_int,
              help="Sampler steps (default: the preset's).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MNIST directory (default: the cache).")
@threads_option
@old_spelling("--steps", "--sampler-steps", "steps", type=int, callback=positive_int)
def table1(out: Path, preset: str, seeds: int | None, epochs: int | None, width: float | None,
           n_train: int | None, lam_spec: tuple[float | None, tuple[tuple[str, float], ...]],
           sub_batches: tuple[tuple[str, int | None], ...] | None, only: tuple[str, ...] | None,
           grad_clip: float | None, n_samples: int | None, steps: int | None,
           data_dir: Path | None) -> None:
    """Train (or reuse) none/fp/sn/jac/div x seeds, evaluate each, and write Table I.

    Writes OUT/table1.md, OUT/table1.csv (mean ± std over seeds of FID, density, coverage,
    entropy, NLL bits/dim, time per epoch, each loss's lambda, and each penalty's paired
    difference against none with the t-test and sign-flip p-values), OUT/report.md and
    OUT/report_diagnostics.png; the tables are rewritten after every run.
    Run it again after an interruption: finished trainings and evaluations are skipped, and a
    killed training resumes from its last checkpoint.
    """
    from scorefpe.experiments.table1 import Table1Config, check_experiment_dir, run_table1

    lam, lams = lam_spec
    try:
        cfg = Table1Config(preset=preset, seeds=seeds, epochs=epochs, lam=lam, lams=lams,
                           width=width, n_train=n_train, n_samples=n_samples, steps=steps,
                           sub_batches=sub_batches, only=only,
                           extra_train=(() if grad_clip is None else (("grad_clip", grad_clip),)))
        check_experiment_dir(out)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _run_experiment(functools.partial(run_table1, cfg, out), "table1",
                    "Table I was not written; a smaller --lam needs a new --out.", data_dir)


@experiment.command("lambda-sweep")
@click.option("--out", type=click.Path(path_type=Path), required=True, callback=output_dir,
              help="Sweep directory (new, empty, or one from an earlier call to resume/extend).")
@click.option("--penalty", type=click.Choice(["fp", "sn", "jac", "div"]), default="fp",
              show_default=True, help="The penalty whose weight is swept.")
@click.option("--lams", type=str, default="1e-4,1e-3,1e-2", show_default=True,
              callback=parse_floats, help="Comma-separated penalty weights lambda > 0.")
@click.option("--seeds", type=int, default=2, show_default=True, callback=positive_int,
              help="Seeds 0..N-1 per lambda.")
@click.option("--preset", type=str, default="smoke", show_default=True, help="smoke or tiny.")
@click.option("--epochs", type=int, default=None, callback=positive_int,
              help="Training epochs (default: the preset's).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also train the unpenalised runs (lambda = 0) as the reference.")
@click.option("--n-points", "points", type=int, default=32, show_default=True, callback=positive_int,
              help="Noised test images per t for r_FP(t).")
@click.option("--n-t", type=click.IntRange(min=2), default=9, show_default=True,
              help="Times on the log grid 1e-4..1.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MNIST directory (default: the cache).")
@threads_option
@old_spelling("--points", "--n-points", "points", type=int, callback=positive_int)
def lambda_sweep(out: Path, penalty: str, lams: tuple[float, ...], seeds: int, preset: str,
                 epochs: int | None, baseline: bool, points: int, n_t: int,
                 data_dir: Path | None) -> None:
    """Train PENALTY runs at several lambdas x seeds (and the baseline), and plot r_FP(t) per
    lambda and its time average against lambda (the 2026 paper's Fig. 9).

    Writes OUT/lambda_sweep.md, OUT/lambda_sweep.json and OUT/lambda_sweep_<penalty>.png.
    Run it again after an interruption: finished trainings and diagnostics are skipped; more
    lambdas or seeds add runs.
    """
    from scorefpe.experiments.lambda_sweep import SweepConfig, check_sweep_dir, run_lambda_sweep

    try:
        cfg = SweepConfig(penalty=penalty, lams=lams, seeds=seeds, preset=preset,
                          epochs=epochs, baseline=baseline, n_points=points, n_t=n_t)
        check_sweep_dir(cfg, out)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _run_experiment(functools.partial(run_lambda_sweep, cfg, out), "lambda-sweep",
                    "The sweep was not summarised; drop that lambda or use a new --out.",
                    data_dir)
