"""`scorefpe experiment table1`: every loss x seed trained, evaluated and tabulated (Table I)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _pos(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be > 0, got {value}", ctx=ctx, param=param)
    return value


@click.group("experiment")
def experiment() -> None:
    """Experiments of the papers, built from train / eval / report."""


@experiment.command("table1")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Experiment directory (new, empty, or one from an earlier call to resume).")
@click.option("--preset", type=str, default="smoke", show_default=True,
              help="smoke or tiny (tiny: the whole table in a few CPU minutes).")
@click.option("--seeds", type=int, default=None, callback=_pos,
              help="Seeds 0..N-1 per loss (default: the preset's, smoke 3, tiny 1).")
@click.option("--epochs", type=int, default=None, callback=_pos,
              help="Training epochs (default: the preset's).")
@click.option("--lam", type=float, default=1e-3, show_default=True,
              help="Penalty weight lambda of fp/sn/jac/div.")
@click.option("--n-samples", type=int, default=None, callback=_pos,
              help="Samples per run for the metrics (default: the preset's).")
@click.option("--steps", type=int, default=None, callback=_pos,
              help="Sampler steps (default: the preset's).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MNIST directory (default: the cache).")
def table1(out: Path, preset: str, seeds: int | None, epochs: int | None, lam: float,
           n_samples: int | None, steps: int | None, data_dir: Path | None) -> None:
    """Train (or reuse) none/fp/sn/jac/div x seeds, evaluate each, and write Table I.

    Writes OUT/table1.md, OUT/table1.csv (mean ± std over seeds of FID, density, coverage,
    entropy, NLL bits/dim, time per epoch), OUT/report.md and OUT/report_diagnostics.png.
    Run it again after an interruption: finished trainings and evaluations are skipped, and a
    killed training resumes from its last checkpoint.
    """
    from scorefpe.evaluation.experiment import Table1Config, check_experiment_dir, run_table1
    from scorefpe.training.loop import NonFiniteLossError

    try:
        cfg = Table1Config(preset=preset, seeds=seeds, epochs=epochs, lam=lam,
                           n_samples=n_samples, steps=steps)
        check_experiment_dir(out)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if data_dir is not None and not data_dir.is_dir():
        raise click.BadParameter(f"directory {str(data_dir)!r} does not exist",
                                 param_hint="--data-dir")
    try:
        paths = run_table1(cfg, out, data_dir=data_dir, progress=True,
                           echo=lambda m: click.echo(f"[table1] {m}", err=True))
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    except NonFiniteLossError as err:
        # Resuming would replay the same draws and diverge again: say so instead of retrying.
        click.echo(f"error: {err}. Table I was not written; a smaller --lam needs a new --out.",
                   err=True)
        sys.exit(1)
    click.echo(paths["md"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
