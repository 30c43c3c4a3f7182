"""`scorefpe cauchy`: solve the score-FPE Cauchy problem with a PINN and compare with DSM."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from scorefpe.cli._options import (NONNEG_FLOAT, POS_FLOAT, UNIT_OPEN, FiniteFloat, check_run_dir, old_spelling, output_dir,
                          positive_int, threads_option)
from scorefpe.data.synthetic import DATASETS

if TYPE_CHECKING:
    from scorefpe.experiments.cauchy import TrainRun


def _summary(name: str, run: TrainRun) -> str:
    """The one-line report of an evaluated run (a `scorefpe.experiments.cauchy.TrainRun` with ``eval``)."""
    ev, s = run.eval, run.eval.samples
    mw = s.get("em", {}).get("mode_weights")
    return (f"[{name}] {run.steps} steps, train {run.train_seconds:.0f} s"
            + (f" ({run.steps_per_s:.2f} steps/s)" if run.steps_per_s else "")
            + f"; mean rel. score error over t in [0.05, 1]: {100 * ev.mean_rel_err:.2f} %"
            + f"; SW em/ode {s['em']['sw']:.3f}/{s['ode']['sw']:.3f} (true-vs-true {s['true']['sw']:.3f})"
            + (f"; mode weights em {[round(v, 3) for v in mw]} ode "
               f"{[round(v, 3) for v in s['ode']['mode_weights']]}" if mw else "")
            + (f"; mean log p model {ev.density['model_mean_log_prob']:.3f} vs true "
               f"{ev.density['true_mean_log_prob']:.3f}" if ev.density else ""))


def _empty(directory: Path) -> None:
    """Remove everything in ``directory`` (which this command found missing or empty)."""
    import shutil

    for p in directory.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


@click.command()
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="gmm2d", show_default=True,
              help="Synthetic data set; it needs a closed-form score (the initial condition and the reference).")
@click.option("--sde", "sde_name", type=click.Choice(["vp", "ve"]), default="ve", show_default=True,
              help="VE: the SDE of issue 15's targets (docs/results/cauchy.md).")
@click.option("--steps", type=int, default=3000, show_default=True, callback=positive_int,
              help="Optimiser steps (>= 1).")
@click.option("--batch-size", "batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Collocation points per step.")
@click.option("--ic-batch-size", "batch_ic", type=click.IntRange(min=1), default=256, show_default=True,
              help="Initial-condition points per step.")
@click.option("--residual", type=click.Choice(["exact", "estimated"]), default="exact", show_default=True,
              help="exact: forward-mode d_t s, exact div; estimated: FD stencil + Hutchinson.")
@click.option("--init", "init", type=click.Choice(["exact", "dsm"]), default="exact", show_default=True,
              help="Initial condition at t_min: the exact score, or DSM at t_min (noisy-data variant).")
@click.option("--weighting", type=click.Choice(["natural", "none"]), default="natural", show_default=True,
              help="Residual weight w(t): b(t)^3/g(t)^2 (every noise level counts) or 1 (the paper).")
@click.option("--precond", type=click.Choice(["local", "global"]), default=None,
              help="Model wrapper: local (scale from the initial score's RMS, time tau(t); the default) or "
                   "global (the first version: scale from the data's spread, raw t; the default with --init dsm).")
@click.option("--collocation", type=click.Choice(["data", "mixed"]), default="mixed", show_default=True,
              help="data: perturbed data (the paper; cannot see gmm2d's mode weights); mixed: a share "
                   "(--uniform-fraction, default a quarter) uniform on the widened data box.")
@click.option("--uniform-fraction", type=FiniteFloat(min=0, max=1, min_open=True), default=None,
              help="With --collocation mixed: share of the points drawn uniform, in (0, 1] [default: 0.25].")
@click.option("--t-sampling", type=click.Choice(["uniform", "tau", "mixed"]), default="uniform", show_default=True,
              help="Collocation times: uniform in t (the paper), uniform in the log score scale tau(t) "
                   "(where the score changes), or half of each.")
@click.option("--ic-weight", type=NONNEG_FLOAT, default=1.0, show_default=True)
@click.option("--ema", type=FiniteFloat(min=0, max=1, max_open=True), default=0.0, show_default=True,
              help="Decay of an EMA of the weights used for evaluation, in [0, 1) (0: the raw weights).")
@click.option("--causal-eps", type=NONNEG_FLOAT, default=0.0, show_default=True,
              help="Causal weighting in t: bin i's residual weighted by exp(-eps (IC + earlier bins' residual)); 0: off.")
@click.option("--causal-bins", type=click.IntRange(min=1), default=8, show_default=True,
              help="Equal t-bins of the causal weighting.")
@click.option("--rad-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Residual-based adaptive collocation: redraw a candidate pool every N steps and draw "
                   "the batch prop. to r^k/mean(r^k)+c of its residuals; 0: off.")
@click.option("--rad-pool", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Candidates per pool of --rad-every.")
@click.option("--rad-k", type=NONNEG_FLOAT, default=1.0, show_default=True,
              help="Exponent of the squared residual in --rad-every (0.5: RAD's own k = 1 on |eps|, "
                   "measured better than 1 in docs/results/cauchy.md).")
@click.option("--rad-c", type=NONNEG_FLOAT, default=1.0, show_default=True, help="Offset c of --rad-every.")
@click.option("--rad-ic/--no-rad-ic", default=False, show_default=True,
              help="With --rad-every: draw the initial-condition points the same way, ranked by their IC error.")
@click.option("--curriculum", type=FiniteFloat(min=0, max=1), default=0.0, show_default=True,
              help="Grow the collocation times' horizon from t_min to 1 over this share of the steps; 0: off.")
@click.option("--lr-schedule", type=click.Choice(["cosine", "exponential", "constant"]), default="cosine",
              show_default=True, help="Step size from --lr to --lr/100 over the steps.")
@click.option("--time-method", type=click.Choice(["default", "exact", "central", "nonuniform"]), default="default",
              show_default=True, help="d_t s of the residual: default is forward-mode (exact) with --residual exact "
                                      "and FP-Diffusion's nonuniform stencil with --residual estimated.")
@click.option("--balance-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Every N steps set the IC weight to a running average of |grad residual|/|grad IC|; 0: off.")
@click.option("--balance-decay", type=FiniteFloat(min=0, max=1, max_open=True), default=0.9, show_default=True,
              help="Decay of the running average of --balance-every, in [0, 1).")
@click.option("--lr", type=POS_FLOAT, default=1e-2, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--depth", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--t-min", type=UNIT_OPEN, default=1e-3,
              show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also train DSM with the same network and model evaluations per step.")
@click.option("--eval-samples", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option("--eval-points", type=click.IntRange(min=10), default=4096, show_default=True,
              help="Samples of q_t per t for the score error.")
@click.option("--fp-points", type=click.IntRange(min=2), default=256, show_default=True,
              help="Samples of q_t per t for r_FP(t) (exact residual).")
@click.option("--sampler-steps", "em_steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Euler-Maruyama steps of the evaluation sampler.")
@click.option("--density-points", type=click.IntRange(min=0), default=256, show_default=True,
              help="True samples at which the ODE log-density is compared (0: skip).")
@click.option("--density-grid", type=click.IntRange(min=0), default=40, show_default=True,
              help="Grid side of the density figure (0: no density figure).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR's checkpoints (same options; --steps may grow).")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop training at this step (checkpoint saved, no evaluation); continue with --resume.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, callback=output_dir,
              help="Run directory.")
@threads_option
@old_spelling("--batch", "--batch-size", "batch", type=click.IntRange(min=1))
@old_spelling("--batch-ic", "--ic-batch-size", "batch_ic", type=click.IntRange(min=1))
@old_spelling("--em-steps", "--sampler-steps", "em_steps", type=click.IntRange(min=1))
def cauchy(dataset, sde_name, steps, batch, batch_ic, residual, init, weighting, precond, collocation, uniform_fraction,
           t_sampling, ic_weight, ema, causal_eps, causal_bins, rad_every, rad_pool, rad_k, rad_c, rad_ic, curriculum, lr_schedule, time_method,
           balance_every, balance_decay, lr, hidden, depth, t_min, seed, baseline, eval_samples, eval_points, fp_points, em_steps,
           density_points, density_grid,
           checkpoint_every, resume, stop_after, out) -> None:
    """Learn all scores from the score FPE and the score at t_min alone (FP-Diffusion Sec. 6.1).

    The defaults (VE, mixed collocation with a quarter of the points uniform, 3000 steps) are
    the one setting that met the mean-error target on gmm2d and gmm8 on every seed in
    docs/results/cauchy.md; the paper's own is --collocation data."""
    from scorefpe.data.synthetic import get_dataset
    from scorefpe.experiments.cauchy import CauchyEvalConfig, ResumeMismatchError, run_cauchy
    from scorefpe.pinn import CauchyConfig, evals_per_step
    from scorefpe.experiments.cauchy import EvaluationError
    from scorefpe.sde import make_sde

    if uniform_fraction is not None and collocation != "mixed":
        raise click.UsageError(f"--uniform-fraction {uniform_fraction} needs --collocation mixed")
    ds = get_dataset(dataset)
    if not ds.has_score:
        raise click.BadParameter(
            f"{dataset!r} has no closed-form score: the Cauchy problem needs the score at t_min "
            f"and the evaluation needs the true score at every t", param_hint="--dataset")
    try:
        cfg = CauchyConfig(dataset=dataset, sde=sde_name, steps=steps, batch=batch, batch_ic=batch_ic,
                           lr=lr, lr_final=lr / 100, ic_weight=ic_weight, residual=residual,
                           weighting=weighting, precond=precond or ("global" if init == "dsm" else "local"),
                           collocation=collocation,
                           uniform_fraction=uniform_fraction if uniform_fraction is not None else (
                               0.25 if collocation == "mixed" else 0.5),  # 0.5 (unused): resumable data runs
                           t_sampling=t_sampling, init=init, t_min=t_min, hidden=hidden, depth=depth,
                           seed=seed, ema=ema, causal_eps=causal_eps, causal_bins=causal_bins,
                           rad_every=rad_every, rad_pool=rad_pool, rad_k=rad_k, rad_c=rad_c, rad_ic=rad_ic, curriculum=curriculum,
                           lr_schedule=lr_schedule,
                           time_method=None if time_method == "default" else time_method,
                           balance_every=balance_every, balance_decay=balance_decay)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    out_dir = Path(out)
    check_run_dir(out_dir, "cauchy")
    fresh = not out_dir.exists() or not any(out_dir.iterdir())
    if not fresh and not resume:
        raise click.UsageError(f"--out {out!r} exists and is not empty; use --resume or another directory")
    sde = make_sde(sde_name)
    if dataset == "checkerboard" and collocation == "mixed":
        click.echo("warning: on the checkerboard the exact initial score on uniform points is ~1e7 times its "
                   "size on the data (docs/results/cauchy.md); --collocation data is the usable choice there",
                   err=True)
    click.echo(f"scorefpe cauchy: dataset={dataset} sde={sde_name} ({sde}) steps={steps} residual={residual} "
               f"init={init} weighting={weighting} precond={cfg.precond}; "
               f"{evals_per_step(cfg, ds.dim)} model evaluations per step")

    def report(name: str, run: TrainRun) -> None:
        if run.eval is None:
            click.echo(f"[{name}] stopped at step {run.steps} of {steps}; continue with --resume")
        else:
            click.echo(_summary(name, run))

    eval_cfg = CauchyEvalConfig(n_samples=eval_samples, em_steps=em_steps, n_points=eval_points,
                                n_fp_points=fp_points, n_density=density_points, density_grid=density_grid)
    try:
        result = run_cauchy(cfg, ds, sde, out_dir, baseline=baseline, eval_cfg=eval_cfg,
                            checkpoint_every=checkpoint_every, resume=resume, stop_after=stop_after,
                            progress=True, on_run=report)
    except ResumeMismatchError as err:
        raise click.UsageError(f"--resume: {err}") from err
    except FloatingPointError as err:
        # Nothing to resume from when it failed before the first checkpoint: leave the directory
        # as it was, so the same command with a smaller --lr can run in it.
        if fresh and not any(out_dir.rglob("checkpoint.pt")):
            _empty(out_dir)
        raise click.UsageError(f"training diverged: {err}; try a smaller --lr (or --ic-weight)") from err
    except EvaluationError as err:
        raise click.ClickException(str(err)) from err
    if result.results_path is not None:
        click.echo(f"wrote {result.results_path} and {', '.join(p.name for p in result.figures)}")
