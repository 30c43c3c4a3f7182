"""Synthetic-data commands: `scorefpe train synthetic`, `scorefpe likelihood RUN_DIR`,
`scorefpe curl RUN_DIR`, `scorefpe benchmark synthetic --out DIR`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click

from scorefpe.cli._options import (NONNEG_FLOAT, POS_FLOAT, UNIT_OPEN, check_run_dir, comma_list, finite_float,
                          old_spelling, output_dir, output_file, threads_option)
from scorefpe.data.synthetic import DATASETS
from scorefpe.sampling.likelihood import ODE_METHODS
from scorefpe.sde import SDES

DATASET_CHOICE = click.Choice(sorted(DATASETS))
SDE_CHOICE = click.Choice(list(SDES))
ODE_CHOICE = click.Choice(list(ODE_METHODS))


def _write_json(path: str, obj: object) -> None:
    from scorefpe._util import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _load_run(run_dir: str, ema: bool):
    from scorefpe.experiments.synthetic_bench import build_model, load_synthetic_run

    try:
        model, cfg = load_synthetic_run(run_dir, ema=ema)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    _, sde, ds = build_model(cfg)
    return model, cfg, sde, ds


# ---------------------------------------------------------------------------------------------
@click.command("synthetic")
@click.option("--dataset", type=DATASET_CHOICE, default="gmm8", show_default=True)
@click.option("--sde", "sde_name", type=SDE_CHOICE, default="vp", show_default=True)
@click.option("--penalty", type=click.Choice(["none", "fpd"]), default="none", show_default=True,
              help="none: DSM; fpd: DSM + FP-Diffusion's alpha/D^m ||omega eps||^m + beta |L[s]|.")
@click.option("--alpha", type=NONNEG_FLOAT, default=1e-3, show_default=True)
@click.option("--beta", type=NONNEG_FLOAT, default=0.0, show_default=True)
@click.option("--omega", type=click.Choice(["one", "g2"]), default="one", show_default=True)
@click.option("--m", "m_pow", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True,
              help="Optimiser steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--lr", type=POS_FLOAT, default=1e-3, show_default=True)
@click.option("--t-min", type=UNIT_OPEN, default=1e-3, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--depth", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=250, show_default=True,
              help="Checkpoint every N steps (0: at the end only); a killed run continues with --resume.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps in total (checkpointed; continue with --resume).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, callback=output_dir,
              help="Run directory (config.json, checkpoint.pt, metrics.jsonl, timing.json).")
@click.option("--device", type=str, default="cpu", show_default=True,
              help="auto, cpu, cuda, cuda:N (the MLPs are small: the CPU is usually faster).")
@threads_option
def train_synthetic(dataset, sde_name, penalty, alpha, beta, omega, m_pow, steps, batch_size, lr,
                    t_min, hidden, depth, seed, resume, checkpoint_every, max_steps, out_dir,
                    device) -> None:
    """Train an MLP score model on a synthetic data set (DSM or DSM + FP regulariser)."""
    from scorefpe.cli._options import resolve_device_option
    from scorefpe.experiments.synthetic_bench import SyntheticRunConfig, train_synthetic_run

    dev = resolve_device_option(device)
    try:
        cfg = SyntheticRunConfig(dataset=dataset, sde=sde_name, penalty=penalty, alpha=alpha,
                                 beta=beta, omega=omega, m=m_pow, steps=steps,
                                 batch_size=batch_size, lr=lr, t_min=t_min, hidden=hidden,
                                 depth=depth, seed=seed)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    out = Path(out_dir)
    check_run_dir(out, "synthetic")
    if not resume and (out / "checkpoint.pt").exists():
        raise click.UsageError(f"{out_dir} already holds a checkpoint; use --resume or another --out")
    if resume and not (out / "checkpoint.pt").is_file():
        raise click.BadParameter(f"no checkpoint to resume in {out_dir!r}", param_hint="--out")
    fresh = not out.exists()
    from scorefpe.training import NonFiniteLossError

    try:
        timing = train_synthetic_run(cfg, out, progress=True, resume=resume,
                                     checkpoint_every=checkpoint_every, max_steps=max_steps,
                                     device=str(dev))
    except NonFiniteLossError as err:
        raise click.ClickException(f"training stopped: {err}") from err
    except ValueError as err:
        if fresh and out.exists():
            shutil.rmtree(out)
        raise click.UsageError(str(err)) from err
    if timing.get("stopped"):
        click.echo(f"stopped at step {timing['steps']} of {steps}; continue with --resume ({out_dir})")
        return
    click.echo(f"trained {cfg.label} on {dataset} ({sde_name}): {timing['steps']} steps in "
               f"{timing['seconds']:.1f} s ({timing['steps_per_s']:.1f} steps/s); "
               f"last terms {timing['last_terms']}; wrote {out_dir}")


# ---------------------------------------------------------------------------------------------
@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--n-points", "n_points", type=click.IntRange(min=2), default=500, show_default=True,
              help="Held-out points x ~ q_{t_min}.")
@click.option("--rtol", type=POS_FLOAT, default=1e-5, show_default=True)
@click.option("--atol", type=POS_FLOAT, default=1e-5, show_default=True)
@click.option("--method", type=ODE_CHOICE, default="RK45", show_default=True)
@click.option("--hutchinson", "n_probes", type=click.IntRange(min=1), default=None,
              help="Use Hutchinson with this many fixed probes instead of the exact divergence.")
@click.option("--probe", type=click.Choice(["rademacher", "gaussian"]), default="rademacher",
              show_default=True, help="Hutchinson probe distribution (Rademacher: lower variance).")
@click.option("--seed", type=click.IntRange(min=0), default=1234, show_default=True)
@click.option("--ema", is_flag=True,
              help="Use the EMA weights (default: the raw weights; an EMA of decay 0.999 still "
                   "holds much of the initialisation after a few thousand steps).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=output_file,
              help="Write results here.")
@threads_option
@old_spelling("--n", "--n-points", "n_points", type=click.IntRange(min=2))
def likelihood(run_dir, n_points, rtol, atol, method, n_probes, probe, seed, ema, json_path) -> None:
    """NLL of a synthetic run's model by the probability-flow ODE, and its gap to the true NLL."""
    import torch

    from scorefpe.experiments.synthetic_bench import heldout_likelihood

    model, cfg, sde, ds = _load_run(run_dir, ema)
    try:
        res = heldout_likelihood(model, sde, ds, t_min=cfg.t_min, n=n_points, dtype=torch.float32,
                                 generator=torch.Generator().manual_seed(seed), rtol=rtol,
                                 atol=atol, method=method, n_probes=n_probes, probe=probe)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    divergence = "exact" if n_probes is None else f"hutchinson K={n_probes} {probe}"
    out = {"run_dir": str(run_dir), "weights": "ema" if ema else "raw", "n": n_points,
           "rtol": rtol, "atol": atol, "method": method, "divergence": divergence,
           "nfe": res["nfe"], "seconds": res["seconds"], "nll": res["nll"],
           "nll_se": res["nll_se"]}
    click.echo(f"{ds.name} {cfg.label} ({cfg.sde}): NLL {out['nll']:.4f} ± {out['nll_se']:.4f} "
               f"nats on {n_points} points x ~ q(t_min={cfg.t_min}); nfe {res['nfe']}, "
               f"rtol {rtol}, atol {atol}, {divergence}")
    if res["gap"] is not None:
        out.update(true_nll=res["true_nll"], gap=res["gap"], gap_se=res["gap_se"])
        click.echo(f"true NLL {out['true_nll']:.4f}; gap {out['gap']:.4f} ± {out['gap_se']:.4f}")
    else:
        click.echo(f"{ds.name} has no closed-form density: no true NLL")
    if json_path:
        _write_json(json_path, out)
        click.echo(f"wrote {json_path}")


# ---------------------------------------------------------------------------------------------
@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--n-t", type=click.IntRange(min=2), default=40, show_default=True,
              help="Times, log-spaced in [t_min, T].")
@click.option("--n-points", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--closed-form", is_flag=True, help="Measure the data set's exact score instead.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--ema", is_flag=True,
              help="Use the EMA weights (default: the raw weights; an EMA of decay 0.999 still "
                   "holds much of the initialisation after a few thousand steps).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=output_file,
              help="Write the curve here.")
@threads_option
def curl(run_dir, n_t, n_points, closed_form, seed, ema, json_path) -> None:
    """Curl MSE over t, E_{x~q_t} 1/2 ||J - J^T||_F^2, of a synthetic run's model."""
    import torch

    from scorefpe.metrics.conservativity import curl_mse_curve, uniform_time_mean
    from scorefpe.residuals import Curve, log_t_grid

    model, cfg, sde, ds = _load_run(run_dir, ema)
    if ds.dim < 2:
        raise click.UsageError(f"{ds.name} is 1-D: every 1-D field is a gradient, its curl is 0")
    if closed_form:
        if not ds.has_score:
            raise click.UsageError(f"{ds.name} has no closed-form score")
        fn, dtype, what = ds.score_fn(sde), torch.float64, "closed-form score"
    else:
        fn, dtype, what = model, torch.float32, cfg.label
    grid = log_t_grid(cfg.t_min, sde.T, n_t)
    c = curl_mse_curve(fn, sde, lambda n, g: ds.sample(n, g).to(dtype), grid.to(dtype),
                       n_points=n_points, generator=torch.Generator().manual_seed(seed))
    c = Curve(c.name, grid, c.mean, c.se)  # the float64 grid: exact end points for the weights
    avg = uniform_time_mean(c)
    for row in c.as_rows():
        click.echo(f"t={row['t']:.4g}  curl MSE {row['mean']:.4g} ± {row['se']:.2g}")
    click.echo(f"{ds.name} {what}: curl MSE averaged over t ~ U[t_min, T] (log-t trapezoid, "
               f"{n_t} times) {avg.value:.4g} ± {avg.se:.2g}")
    if json_path:
        _write_json(json_path, {"run_dir": str(run_dir), "what": what, "time_average": avg.value,
                                "time_average_se": avg.se, "n_t": n_t, "curve": c.as_rows()})
        click.echo(f"wrote {json_path}")


# ---------------------------------------------------------------------------------------------
@click.group()
def benchmark() -> None:
    """Benchmarks against ground truth."""


@benchmark.command("synthetic")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, callback=output_dir)
@click.option("--datasets", callback=comma_list(str, "data set names", allow_empty=True,
                                                choices=sorted(DATASETS)), default=None,
              help="Comma-separated subset of " + ",".join(sorted(DATASETS)) + " (default: all).")
@click.option("--sde", "sde_name", type=SDE_CHOICE, default="vp", show_default=True)
@click.option("--alphas", callback=comma_list(finite_float, "numbers", allow_empty=True),
              default="0.001,0.01", show_default=True,
              help="FP regulariser weights, one model each (empty: DSM only).")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True,
              help="Optimiser steps per model.")
@click.option("--grid", type=click.IntRange(min=4), default=32, show_default=True)
@click.option("--n-test", type=click.IntRange(min=2), default=400, show_default=True)
@click.option("--dsm-weighting", type=click.Choice(["sigma2", "g2half"]), default="sigma2",
              show_default=True,
              help="lambda(t) of DSM: sigma2 = ||std s + z||^2; g2half = FP-Diffusion's "
                   "1/2 g(t)^2 ||s - grad log q_0t||^2 (their Sec. 5).")
@click.option("--ve-variance", type=click.Choice(["exact", "song"]), default="exact",
              show_default=True,
              help="VE marginal variance: exact sigma^2 - sigma_min^2, or song = sigma^2.")
@click.option("--n-points", type=click.IntRange(min=2), default=200, show_default=True,
              help="Points per t of the curl MSE and r_FP curves.")
@click.option("--no-samples", is_flag=True, help="Skip the sample figure (ODE sampling).")
@threads_option
def benchmark_synthetic(out_dir, datasets, sde_name, alphas, seeds, steps, grid, n_test,
                        dsm_weighting, ve_variance, n_points, no_samples) -> None:
    """Train DSM and FP-regularised models on every synthetic set; write table.md and figures."""
    from scorefpe.experiments import synthetic_report as report
    from scorefpe.experiments.synthetic_bench import BenchmarkConfig, EvalConfig, run_benchmark

    try:
        bcfg = BenchmarkConfig(
            datasets=datasets or tuple(sorted(DATASETS, key=list(DATASETS).index)), sde=sde_name,
            alphas=alphas, seeds=tuple(range(seeds)), steps=steps, dsm_weighting=dsm_weighting,
            ve_variance=ve_variance,
            eval=EvalConfig(n_test=n_test, grid=grid, n_t=40, n_points=n_points))
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    out = Path(out_dir)
    check_run_dir(out, "benchmark")
    t0 = time.perf_counter()
    try:
        records = run_benchmark(bcfg, out, progress=True, log=click.echo)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    elapsed = time.perf_counter() - t0
    cmd = (f"scorefpe benchmark synthetic --out {out_dir} --sde {sde_name} --alphas "
           f"{','.join(f'{a:g}' for a in bcfg.alphas)} --seeds {seeds} --steps {steps} "
           f"--grid {grid} --n-test {n_test} --dsm-weighting {dsm_weighting} --ve-variance "
           f"{ve_variance} --n-points {n_points} --datasets {','.join(bcfg.datasets)}")
    from scorefpe._util import atomic_write_text

    atomic_write_text(out / "table.md", report.table_markdown(records, cmd, elapsed))
    atomic_write_text(out / "curl_curves.csv", report.curves_csv(records, "curl"))
    sub = f"{sde_name.upper()} SDE, {steps} steps, seeds {seeds}"
    report.plot_densities(records, out / "synthetic_density.png",
                          f"true q(t_min) vs model p(t_min) by the probability-flow ODE ({sub})")
    figs = ["synthetic_density.png"]
    for key, name, what, ylabel in (
            ("curl", "synthetic_curl.png", "curl MSE over t: E 1/2||J - J^T||_F^2", "curl MSE"),
            ("r_fp", "synthetic_rfp.png", "r_FP(t) = 1/D E||eps||^2", "r_FP"),
            ("r_dsm", "synthetic_rdsm.png", "r_DSM(t) = 1/D E||s - grad log q_0t||", "r_DSM")):
        floor = 1e-20 if key in ("curl", "r_fp") else None  # the closed form's round-off
        if report.plot_curves(records, key, out / name, f"{what} ({sub})", ylabel,
                              floor=floor) is not None:
            figs.append(name)
    if not no_samples:
        report.plot_samples(out, records, out / "synthetic_samples.png",
                            f"probability-flow ODE samples ({sub})")
        figs.append("synthetic_samples.png")
    click.echo(report.format_table(records))
    click.echo(f"wrote {out / 'table.md'}, curl_curves.csv and {', '.join(figs)} in {out_dir} "
               f"({time.perf_counter() - t0:.0f} s)")


# ---------------------------------------------------------------------------------------------
@click.group("train")
def _fallback_train() -> None:
    """Train score models."""


def register(main: click.Group) -> None:
    """Add this module's commands to ``main``. `synthetic` joins the `train` group of scorefpe/cli/train_cmd.py
    when that exists, else a local `train` group holding only it."""
    main.add_command(likelihood)
    main.add_command(curl)
    main.add_command(benchmark)
    grp = main.commands.get("train")
    if grp is None:
        try:
            from scorefpe.cli.train_cmd import train as grp  # type: ignore[no-redef]
        except ImportError:
            grp = None
        if not isinstance(grp, click.Group):
            grp = _fallback_train
        main.add_command(grp)
    if isinstance(grp, click.Group):
        grp.add_command(train_synthetic)
