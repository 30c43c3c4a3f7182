"""`scorefpe sample RUN_DIR` and `scorefpe eval RUN_DIR`: samples and metrics of a trained MNIST run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scorefpe.cli._options import FiniteFloat, UNIT_OPEN, old_spelling, output_file, positive_int, threads_option

SAMPLERS = ("em", "pc", "rd", "ode")


def _run_dir(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    p = Path(value)
    if not p.is_dir():
        raise click.BadParameter(f"run directory {value!r} does not exist", ctx=ctx, param=param)
    if not (p / "config.json").is_file() or not (p / "checkpoint.pt").is_file():
        raise click.BadParameter(
            f"{value!r} is not a run directory (needs config.json and checkpoint.pt from "
            "`scorefpe train mnist`)", ctx=ctx, param=param)
    return p


def _sampler_choice(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value not in SAMPLERS:
        raise click.BadParameter(
            f"unknown sampler {value!r}; choose one of {', '.join(SAMPLERS)}", ctx=ctx, param=param)
    return value


def _sample_options(f):
    f = click.option("--t-min", type=UNIT_OPEN,
                     default=1e-3, show_default=True, help="End time of the sampler.")(f)
    f = click.option("--batch-size", type=int, default=500, show_default=True,
                     callback=positive_int,
                     help="Samples per batch (the seed reproduces samples for a fixed batch size).")(f)
    f = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)(f)
    f = click.option("--sampler-steps", "steps", type=int, default=500, show_default=True,
                     callback=positive_int,
                     help="Time steps of em/pc/rd (the ode sampler is adaptive).")(f)
    f = click.option("--sampler", type=str, default="pc", show_default=True,
                     callback=_sampler_choice,
                     help="em, pc, rd (pc without corrector) or ode.")(f)
    f = click.option("--n-samples", "n", type=int, default=10_000, show_default=True,
                     callback=positive_int,
                     help="Number of samples.")(f)
    f = threads_option(f)
    f = old_spelling("--n", "--n-samples", "n", type=int, callback=positive_int)(f)
    f = old_spelling("--steps", "--sampler-steps", "steps", type=int, callback=positive_int)(f)
    return f


def _sample_config(n, sampler, steps, seed, batch_size, t_min):
    from scorefpe.evaluation.run_eval import SampleConfig

    try:
        return SampleConfig(n=n, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                            t_min=t_min)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.command("sample")
@click.argument("run_dir", callback=_run_dir)
@_sample_options
@click.option("--npy", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_file,
              help="Output .npy (default RUN_DIR/samples.npy); the grid PNG and settings JSON "
                   "go beside it.")
@old_spelling("--out", "--npy", "out", type=click.Path(dir_okay=False, path_type=Path),
              callback=output_file)
def sample(run_dir: Path, n: int, sampler: str, steps: int, seed: int, batch_size: int,
           t_min: float, out: Path | None) -> None:
    """Draw samples from the EMA model of RUN_DIR; write an .npy array and a sample-grid PNG."""
    from scorefpe.evaluation.run_eval import sample_run, save_samples

    cfg = _sample_config(n, sampler, steps, seed, batch_size, t_min)
    out = out if out is not None else run_dir / "samples.npy"
    if out.suffix != ".npy":
        raise click.BadParameter(f"must end in .npy, got {str(out)!r}", param_hint="--npy")
    try:
        samples, info = sample_run(run_dir, cfg, progress=True)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    paths = save_samples(samples, info, out)
    click.echo(f"{n} samples ({sampler}, nfe {info['nfe']}, {info['seconds']:.1f} s) -> "
               f"{paths['npy']}, {paths['png']}")


@click.command("eval")
@click.argument("run_dir", callback=_run_dir)
@_sample_options
@click.option("--k", type=int, default=5, show_default=True, callback=positive_int,
              help="Neighbours for density and coverage.")
@click.option("--nll-n", type=click.IntRange(min=0), default=16, show_default=True,
              help="Test images for the bits/dim estimate (0 skips it).")
@click.option("--nll-probes", type=int, default=1, show_default=True, callback=positive_int)
@click.option("--nll-probe", type=click.Choice(["rademacher", "gaussian"]), default="rademacher",
              show_default=True, help="Hutchinson probe distribution of the NLL (Rademacher: "
                                      "lower variance).")
@click.option("--nll-tol", type=FiniteFloat(min=0, min_open=True), default=1e-5,
              show_default=True, help="rtol = atol of the likelihood ODE.")
@click.option("--diag-points", type=int, default=32, show_default=True, callback=positive_int,
              help="Points per t for the noise-level diagnostics.")
@click.option("--diag-n-t", type=click.IntRange(min=2), default=9, show_default=True,
              help="Times on the log grid 1e-4..1.")
@click.option("--no-diagnostics", is_flag=True, help="Skip the diagnostics figure.")
def evaluate(run_dir: Path, n: int, sampler: str, steps: int, seed: int, batch_size: int,
             t_min: float, k: int, nll_n: int, nll_probes: int, nll_probe: str, nll_tol: float,
             diag_points: int, diag_n_t: int, no_diagnostics: bool) -> None:
    """Evaluate RUN_DIR: LeNet FID, density/coverage, entropy, NLL (bits/dim), time per epoch.

    Reuses RUN_DIR/samples.npy when it was drawn with the same settings. Writes eval.json,
    eval.md and diagnostics.png into RUN_DIR.
    """
    from scorefpe.evaluation.run_eval import EvalConfig, evaluate_run, write_eval

    scfg = _sample_config(n, sampler, steps, seed, batch_size, t_min)
    try:
        cfg = EvalConfig(sample=scfg, k=k, nll_n=nll_n, nll_probes=nll_probes, nll_probe=nll_probe,
                         nll_rtol=nll_tol,
                         nll_atol=nll_tol, diagnostics=not no_diagnostics,
                         diag_points=diag_points, diag_n_t=diag_n_t)
        res = evaluate_run(run_dir, cfg, progress=True,
                           echo=lambda m: click.echo(f"[eval] {m}", err=True))
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    paths = write_eval(res, run_dir)
    nll = res.nll
    click.echo(json.dumps({
        "fid": res.fid, "density": res.density, "coverage": res.coverage,
        "entropy_nats": res.entropy_nats,
        "nll_bpd": None if nll is None else nll["bpd"],
        "time_per_epoch_s": res.time_per_epoch["mean_s"],
    }, indent=2))
    click.echo(f"wrote {paths['json']}, {paths['md']}")


@click.command("report")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--md", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_file, help="Markdown file (default DIRECTORY/report.md).")
@old_spelling("--out", "--md", "out", type=click.Path(dir_okay=False, path_type=Path),
              callback=output_file)
def report(directory: Path, out: Path | None) -> None:
    """One markdown table of every run under DIRECTORY that has an eval.json."""
    from scorefpe.evaluation.run_eval import collect_report

    if not directory.is_dir():
        raise click.BadParameter(f"directory {str(directory)!r} does not exist",
                                 param_hint="DIRECTORY")
    try:
        text = collect_report(directory)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    from scorefpe._util import atomic_write_text

    out = out if out is not None else directory / "report.md"
    atomic_write_text(out, text)
    click.echo(f"wrote {out}")


@click.command("diagnose")
@click.argument("run_dirs", nargs=-1, required=True, callback=lambda c, p, v: [_run_dir(c, p, x) for x in v])
@click.option("--png", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_file,
              help="PNG with the curves of all runs (a .json with the numbers goes beside it). [required]")
@click.option("--n-points", "points", type=int, default=32, show_default=True, callback=positive_int,
              help="Noised test images per t.")
@click.option("--n-t", type=click.IntRange(min=2), default=9, show_default=True,
              help="Times on the log grid 1e-4..1.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@threads_option
@old_spelling("--out", "--png", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), callback=output_file)
@old_spelling("--points", "--n-points", "points", type=int, callback=positive_int)
def diagnose(run_dirs: list[Path], out: Path, points: int, n_t: int, seed: int) -> None:
    """r_FP(t), r_DSM(t) and E||J_s||_F^2 over t in [1e-4, 1] for several runs, on one figure."""
    from scorefpe._util import atomic_write_text, run_labels
    from scorefpe.data.mnist import mnist_tensor
    from scorefpe.evaluation.diagnostics import diagnostics_for_runs

    if out.suffix != ".png":
        raise click.BadParameter(f"must end in .png, got {str(out)!r}", param_hint="--png")
    try:
        run_labels(run_dirs)  # before any data is looked for
        images, _ = mnist_tensor("test")
        curves = diagnostics_for_runs(run_dirs, images, out, n_points=points, n_t=n_t, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    atomic_write_text(out.with_suffix(".json"),
                      json.dumps({k: v.to_dict() for k, v in curves.items()}, indent=2) + "\n")
    click.echo(f"wrote {out} and {out.with_suffix('.json')}")


def register(group: click.Group) -> None:
    """Add `sample`, `eval`, `report` and `diagnose` to the scorefpe group."""
    for cmd in (sample, evaluate, report, diagnose):
        group.add_command(cmd)
