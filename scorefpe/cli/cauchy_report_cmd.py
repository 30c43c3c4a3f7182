"""`scorefpe cauchy-report`: the convergence of several `scorefpe cauchy` runs (one setting's
seeds) in one figure and one CSV."""

from __future__ import annotations

from pathlib import Path

import click

from scorefpe.cli._options import output_dir, parse_floats, threads_option

FIGURE_NAME = "seed_overlay.png"  # the CSV is seed_overlay.csv beside it


@click.command("cauchy-report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", type=click.Choice(["pinn", "dsm"]), default="pinn", show_default=True,
              help="Which model of each run (dsm: the baseline, where the runs trained one).")
@click.option("--times", default=None, callback=parse_floats,
              help="Comma-separated times of the density panels, in [t_min, 1] "
                   "[default: t_min, the t of the largest mean error over the runs, 1].")
@click.option("--line-points", type=click.IntRange(min=3), default=2001, show_default=True,
              help="Points on the line of the density panels.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              callback=output_dir, help=f"Folder for {FIGURE_NAME} and seed_overlay.csv (made if missing).")
@threads_option
def cauchy_report(run_dirs, model, times, line_points, out) -> None:
    """Score error over t per run, the error of the log mass ratio between neighbouring modes
    over t (mixtures of 2-3 modes), and the learned vs true density at three times, for RUN_DIRS
    of one data set and SDE (e.g. the seeds of one `scorefpe cauchy` setting)."""
    from scorefpe.experiments.cauchy_report import CauchyRunError, seed_overlay

    try:
        res = seed_overlay(run_dirs, out / FIGURE_NAME, times=times, model=model, n_line=line_points)
    except CauchyRunError as err:
        raise click.BadParameter(str(err), param_hint="RUN_DIRS") from None
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--times") from None
    click.echo(f"wrote {res.png} and {res.csv}")
    for row in res.rows:
        line = (f"  seed {row['seed']} ({row['run_dir']}): mean rel. score error over t in [0.05, 1] "
                f"{100 * row['mean_rel_err']:.2f} %, max {100 * row['max_rel_err']:.2f} % at t = {row['t_at_max']:.2f}")
        if "w_em_0" in row:
            line += f"; mode-1 weight EM {row['w_em_0']:.3f}" + (f" ODE {row['w_ode_0']:.3f}" if "w_ode_0" in row else "")
        slices = [(k[len("slice_w1_t"):], v) for k, v in row.items()
                  if k.startswith("slice_w1_t") and not k.startswith("slice_w1_true")]
        if "log_ratio_err_t_min" in row:
            line += (f"; |log mass-ratio error| {row['log_ratio_err_t_min']:.3f} at t_min, "
                     f"max {row['log_ratio_err_max_band']:.3f} over the band")
        if slices:
            line += "; slice mass of mode 1 " + ", ".join(
                f"t={t} {v:.3f} (true {row['slice_w1_true_t' + t]:.3f})" for t, v in slices)
        click.echo(line)
