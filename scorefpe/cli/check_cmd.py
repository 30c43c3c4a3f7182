"""`scorefpe check`: the validation battery on a closed-form data set, or with --model the
score-FPE report of a user's own score model (scorefpe/cli/modelcheck_cmd.py)."""

from __future__ import annotations

import sys
import time

import click
from click.core import ParameterSource

from scorefpe.cli.modelcheck_cmd import add_model_options, run_model_check, sde_from_options


def run_model_overlay(models: tuple[str, ...], *, out: str | None, **kw) -> None:
    """`check --model A --model B ...`: the model check of each (its report in OUT/<name>/),
    then their curves overlaid in OUT/overlay.png and OUT/overlay.csv. Bad input exits 2."""
    from pathlib import Path

    from scorefpe._util import run_labels
    from scorefpe.modelcheck.overlay import write_overlay

    if out is None:
        raise click.UsageError("several --model need --out DIR for the overlay figure")
    # --out itself was checked when parsed (model option's output_dir callback)
    try:
        labels = run_labels(models)
    except ValueError as err:
        raise click.UsageError(f"--model: {err}") from None
    reports = {}
    for label, spec in zip(labels, models):
        click.echo(f"== {label} ({spec})")
        reports[label] = run_model_check(model=spec, out=str(Path(out) / label), **kw)
    png, table = write_overlay(
        reports, out, title=f"scorefpe check: {len(models)} models, same draws (seed {kw['seed']})")
    click.echo(f"wrote {png} and {table}")

# Model options that also define the battery's SDE; every other model option needs --model.
SDE_PARAMS = ("beta_min", "beta_max", "sigma_min", "sigma_max")


# Options of the battery alone: given with --model they would do nothing, so they are refused.
BATTERY_ONLY = ("dataset", "t_min", "no_symbolic")


def _given(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """The flags among ``names`` that the user gave (command line or environment)."""
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    return [flags[k] for k in names
            if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)]


def _check_output_file(path: str | None, hint: str) -> None:
    """Refuse (exit 2), before any work, an output file whose folder cannot be made: a parent
    path that is a regular file. A missing folder is created when the file is written."""
    if path is None:
        return
    from pathlib import Path

    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise click.BadParameter(f"{path!r}: {str(parent)!r} is a file, not a directory",
                                         param_hint=hint)
            return


def _model_only_given(ctx: click.Context, model_kw: dict) -> list[str]:
    """'--flag value' of each model-only option the user gave (command line or environment)."""
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    return [f"{flags[k]} {model_kw[k]!r}" for k in model_kw
            if k != "model" and k not in SDE_PARAMS
            and ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)]


@click.command(epilog="Without --model, --beta-min/--beta-max (vp) and --sigma-min/--sigma-max "
                      "(ve) set the SDE of the battery; every other model option needs --model "
                      "(given without it: exit 2), and --dataset/--t-min/--no-symbolic apply "
                      "only without it. --json/--plot write the battery's or the model "
                      "report's JSON/figure.")
@click.option("--dataset", type=click.Choice(["gmm1d", "gmm2d", "gmm8"]), default="gmm2d",
              show_default=True, help="Closed-form data set whose score is the reference.")
@click.option("--sde", "sde_name", type=click.Choice(["vp", "ve"]), default="vp", show_default=True)
@click.option("--t-min", type=click.FloatRange(min=0, min_open=True, max=1, max_open=True),
              default=1e-3, show_default=True, help="Smallest time checked (stencils stay above it).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the results as JSON to this file (with --model: the model report).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              help="Write a PNG figure of the convergence and estimator checks (with --model: "
                   "the report's panels over t).")
@click.option("--no-symbolic", is_flag=True,
              help="Skip the sympy cross-check section (it uses the SDE's default parameters).")
@click.option("--model", "models", multiple=True, metavar="SPEC",
              help="MODULE:ATTR, path/to/file.py:ATTR, FILE.pt (TorchScript) or a run "
                   "directory; a score_fn(x, t), nn.Module or factory. Given several times "
                   "(e.g. one trained run per loss), each is checked with the same draws and "
                   "OUT/overlay.png overlays their curves (needs --out).")
@add_model_options(skip=("sde", "seed", "model"))
@click.pass_context
def check(ctx: click.Context, dataset: str, sde_name: str, t_min: float, seed: int,
          json_path: str | None, plot_path: str | None, no_symbolic: bool,
          models: tuple[str, ...], **model_kw) -> None:
    """Check the score-FPE operators against closed-form scores (exit 0 if all pass, 1 if not),
    or, with --model, report how far a user's score model is from the score FPE."""
    if plot_path is not None and not plot_path.lower().endswith(".png"):
        raise click.BadParameter(f"{plot_path!r} must end in .png", param_hint="--plot")
    _check_output_file(json_path, "--json")
    _check_output_file(plot_path, "--plot")
    if models:
        battery = _given(ctx, BATTERY_ONLY)
        if battery:
            verb = "applies" if len(battery) == 1 else "apply"
            raise click.UsageError(f"{', '.join(battery)} {verb} only to the battery (without "
                                   "--model); a model check takes its points from --data")
        if len(models) > 1:
            if json_path or plot_path:
                raise click.UsageError("--json/--plot write one model's report; several --model "
                                       "write each report and OUT/overlay.png under --out DIR")
            run_model_overlay(models, sde=sde_name, seed=seed, **model_kw)
            return
        from scorefpe._util import atomic_write_text

        # --json / --plot write the model report's JSON / figure (the same content as
        # report.json / report.png under --out), after everything was computed.
        report = run_model_check(model=models[0], sde=sde_name, seed=seed, **model_kw)
        if plot_path:
            report.plot(plot_path)
            click.echo(f"wrote {plot_path}")
        if json_path:
            atomic_write_text(json_path, report.to_json())
            click.echo(f"wrote {json_path}")
        return
    given = _model_only_given(ctx, model_kw)
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise click.UsageError(f"{', '.join(given)} {verb} only to a model check: add --model SPEC")
    from scorefpe.validation.battery import run_battery
    from scorefpe._util import atomic_write_text
    from scorefpe.validation.battery_report import format_table, plot_battery, to_json

    sde = sde_from_options(sde_name, {k: model_kw[k] for k in SDE_PARAMS})
    t0 = time.perf_counter()
    try:
        out = run_battery(dataset, sde, t_min=t_min, seed=seed, symbolic=not no_symbolic)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    elapsed = time.perf_counter() - t0
    click.echo(f"scorefpe check: dataset={dataset} sde={sde_name} ({sde}) t_min={t_min} "
               f"seed={seed} float64")
    click.echo(format_table(out.results))
    click.echo(f"time: {elapsed:.1f} s")
    meta = {"dataset": dataset, "sde": sde_name, "sde_params": repr(sde), "t_min": t_min,
            "seed": seed, "seconds": elapsed}
    if json_path:
        atomic_write_text(json_path, to_json(out.results, meta))
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_battery(out.series, f"scorefpe check --dataset {dataset} --sde {sde_name}", plot_path)
        click.echo(f"wrote {plot_path}")
    sys.exit(0 if out.passed else 1)
