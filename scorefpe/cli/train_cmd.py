"""`scorefpe train mnist`: DSM (+ a penalty) training of the tutorial U-Net on MNIST."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from scorefpe.cli._options import (
    GRAD_CLIP,
    POS_FLOAT,
    UNIT_OPEN,
    FiniteFloat,
    check_run_dir,
    output_dir,
    threads_option,
)
from scorefpe.penalties import Estimator, Omega, Penalty, TimeProposal
from scorefpe.training.config import Precision

PENALTIES = [p.value for p in Penalty]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def train() -> None:
    """Train score models (writes config.json, checkpoint.pt, metrics.jsonl to the run dir)."""


def _nonneg(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (value >= 0 and value < float("inf")):
        raise click.BadParameter(f"must be >= 0 and finite, got {value}", ctx=ctx, param=param)
    return value


@train.command("mnist")
@click.option("--penalty", type=click.Choice(PENALTIES), default="none", show_default=True,
              help="P in L = L_DSM + lam P (fpd: FP-Diffusion's alpha/beta/omega/m regulariser).")
@click.option("--lam", type=float, default=1e-3, show_default=True, callback=_nonneg,
              help="Penalty weight lambda (ignored for --penalty none).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              callback=output_dir, help="Run directory.")
@click.option("--preset", type=click.Choice(["smoke", "cpu", "paper"]), default="smoke",
              show_default=True,
              help="smoke: 4,096 digits, width 0.25, 3 epochs (tests); cpu: 60,000 digits, "
                   "width 0.25, 23 epochs, lr 2e-3, gradient norm clipped at 1000: 15 min on 2 CPU "
                   "cores "
                   "(docs/results/mnist_cpu_tradeoff.md); paper: 60,000 digits, width 1, "
                   "200 epochs (GPU).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory with the MNIST files (default: the scorefpe cache).")
@click.option("--sde", type=click.Choice(["vp", "ve"]), default="vp", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the preset.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Global batch size.")
@click.option("--lr", type=POS_FLOAT, default=None,
              help="Adam step (default 5e-4; 1e-3 for fp/fpd).")
@click.option("--width", type=POS_FLOAT, default=None,
              help="U-Net width factor (channels 32/64/128/256 times this).")
@click.option("--n-train", type=click.IntRange(min=1), default=None,
              help="Use the first N training digits.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after this many steps (resumable).")
@click.option("--seed", type=click.IntRange(min=0), default=None)
@click.option("--device", type=str, default=None, help="auto (default), cpu, cuda, cuda:N.")
@click.option("--precision", type=click.Choice([p.value for p in Precision]), default=None)
@click.option("--ema-decay", type=FiniteFloat(min=0, max=1, max_open=True), default=None)
@click.option("--grad-clip", type=GRAD_CLIP, default=None,
              help="Clip the global gradient norm at this value; inf: no clipping (default: "
                   "the preset's: cpu 1000, smoke and paper none).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=None,
              help="Also checkpoint every N steps (0: at epoch ends only).")
@click.option("--t-min", type=UNIT_OPEN, default=None, help="Smallest diffusion time (default 1e-5).")
@click.option("--sub-batch", type=click.IntRange(min=1), default=None,
              help="Evaluate the penalty on the first N samples of each batch only.")
@click.option("--alpha", type=float, default=None, callback=_nonneg, help="fpd: residual weight.")
@click.option("--beta", type=float, default=None, callback=_nonneg, help="fpd: |L[s]| weight.")
@click.option("--omega", type=click.Choice([o.value for o in Omega]), default=None,
              help="fpd: time weight of the residual.")
@click.option("--m", "m", type=click.IntRange(min=1), default=None, help="fpd: norm power.")
@click.option("--estimator", type=click.Choice([e.value for e in Estimator]), default=None,
              help="How DIV/JAC/FP differentiate the network: autograd (default: VJPs, a double "
                   "backward for FP) or fd (finite differences in x: DIV/JAC ~1.75x a DSM step "
                   "instead of ~2.5x at the same variance; FP cheaper per step but ~80x noisier "
                   "per unit of compute: docs/results/bench_penalties_cpu.md).")
@click.option("--t-proposal", type=click.Choice([p.value for p in TimeProposal]), default=None,
              help="Distribution of t, every term reweighted so it stays unbiased (default "
                   "uniform: the papers'; log-mixture / inverse-square-mixture lower the "
                   "penalty's gradient variance, `scorefpe bench t-proposal`).")
@threads_option
def mnist(
    penalty: str, lam: float, out: Path, preset: str, resume: bool, data_dir: Path | None,
    sde: str, **overrides,
) -> None:
    """Train the U-Net on MNIST with L = L_DSM + lam P; e.g.

    scorefpe train mnist --penalty div --lam 1e-3 --out runs/div --preset smoke

    Several processes / GPUs: torchrun --nproc_per_node=N $(which scorefpe) train mnist ...
    """
    from scorefpe.training import distributed as dd
    from scorefpe.training.loop import NonFiniteLossError
    from scorefpe.training.mnist_unet import mnist_run, train_mnist

    try:
        run = mnist_run(preset, penalty=penalty, lam=lam if penalty != "none" else 0.0, sde=sde,
                        **overrides)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if data_dir is not None and not data_dir.is_dir():
        raise click.BadParameter(f"no such directory: {data_dir}", param_hint="--data-dir")
    check_run_dir(out, "mnist")
    if resume and not (out / "checkpoint.pt").is_file():
        raise click.BadParameter(f"no checkpoint to resume in {out}", param_hint="--out")
    if not resume and (out / "checkpoint.pt").exists():
        raise click.BadParameter(
            f"{out} already holds a checkpoint; pass --resume or choose another directory",
            param_hint="--out",
        )
    try:
        from scorefpe.data.mnist import mnist_tensor

        images, _ = mnist_tensor("train", data_dir=data_dir, n=run.n_train)
    except (FileNotFoundError, ValueError) as err:
        hint = f" (looked in {data_dir})" if data_dir is not None else ""
        raise click.UsageError(f"MNIST data not available{hint}: {err}") from None

    info = dd.init_from_env()
    t0 = time.perf_counter()
    try:
        result = train_mnist(run, out, images=images, resume=resume, dist=info, progress=True)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    except NonFiniteLossError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(f"interrupted; resume with --resume (last checkpoint in {out})", err=True)
        sys.exit(130)
    finally:
        dd.shutdown(info)
    if info.is_main:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in result.last_terms.items())
        click.echo(
            f"{'finished' if result.finished else 'stopped'} at step {result.step} in "
            f"{time.perf_counter() - t0:.1f} s; last step: {terms}; run dir {out}"
        )
