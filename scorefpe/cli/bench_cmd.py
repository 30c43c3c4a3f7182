"""`scorefpe bench penalties`: training-step time and memory of each penalty against plain DSM."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

import click

from scorefpe.cli._options import POS_FLOAT, old_spelling, output_file, threads_option
from scorefpe.penalties import TimeProposal

# The proposals that bench t-proposal compares with uniform t: every non-uniform one.
_PROPOSALS = tuple(p.value for p in TimeProposal if p is not TimeProposal.UNIFORM)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmarks."""


@bench.command("penalties")
@click.option("--batch-size", "batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Samples per training step.")
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True,
              help="Timed steps per variant (median reported).")
@click.option("--width", type=POS_FLOAT, default=1.0,
              show_default=True, help="U-Net width factor (1 = the papers' net).")
@click.option("--sub-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Also time DIV/JAC/FP evaluated on this many samples of the batch.")
@click.option("--device", type=str, default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N (CUDA steps are timed with torch.cuda.synchronize).")
@click.option("--anchor/--no-anchor", default=True, show_default=True,
              help="Time the anchor-style implementation (FP-Diffusion's losses) beside scorefpe's.")
@click.option("--profile", is_flag=True, default=False,
              help="Also time the phases of one FP step (autograd and fd) against a DSM step.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Use real MNIST digits from here (default: uniform noise; cost is the same).")
@click.option("--md", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_file,
              help="Also write the table as markdown (with machine and command) to this file.")
@threads_option
@old_spelling("--batch", "--batch-size", "batch", type=click.IntRange(min=1))
@old_spelling("--out", "--md", "out", type=click.Path(dir_okay=False, path_type=Path),
              callback=output_file)
def penalties(
    batch: int, repeats: int, width: float, sub_batch: int, device: str,
    anchor: bool, profile: bool, data_dir: Path | None, out: Path | None,
) -> None:
    """Median training-step time (forward, penalty, backward, Adam) and memory of DSM + each
    penalty, as ratios to plain DSM, to each estimator's floor and to the anchor-style
    implementation, with each estimator's error against its reference on the same probes."""
    from scorefpe.cli._options import resolve_device_option
    from scorefpe._util import atomic_write_text, machine_description
    from scorefpe.training.bench import (
        bench_penalties, default_variants, format_profile, format_table, profile_fp_step, speedups,
    )

    dev = resolve_device_option(device)
    images = None
    if data_dir is not None:
        try:
            from scorefpe.data.mnist import mnist_tensor

            # More digits than one batch: each timed step draws its own batch.
            images, _ = mnist_tensor("train", data_dir=data_dir, n=max(batch, 8192))
        except (FileNotFoundError, ValueError) as err:
            raise click.BadParameter(f"{data_dir}: {err}", param_hint="--data-dir") from None
    variants = default_variants(batch, sub_batch, anchor=anchor)
    click.echo(f"machine: {machine_description(dev)}", err=True)
    from tqdm.auto import tqdm

    with tqdm(total=len(variants) * (repeats + 2), unit="step", leave=False) as bar:
        rows = bench_penalties(variants, batch=batch, repeats=repeats, width=width, device=str(dev),
                               images=images, on_step=lambda: bar.update(1))
    table = format_table(rows)
    click.echo(table)
    ups = speedups(rows)
    if ups:
        click.echo("speed-up over the anchor-style implementation: "
                   + ", ".join(f"{k} {v:.2f}x" for k, v in ups.items()))
    prof_text = ""
    if profile:
        prof_text = format_profile(profile_fp_step(batch=batch, repeats=repeats, width=width,
                                                   device=str(dev)))
        click.echo(prof_text)
    if out is not None:
        cmd = "scorefpe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        text = (
            f"# Penalty cost: training step vs plain DSM\n\n"
            f"Command: `{cmd}`  \n"
            f"Machine: {machine_description(dev)}  \n"
            f"Date: {datetime.date.today().isoformat()}  \n"
            f"Setup: U-Net width {width}, batch {batch}, VP, t ~ U[1e-5, 1], lambda 1e-3, "
            f"{repeats} timed steps per variant (round-robin), median and quartiles; each step "
            f"draws its own t, z{', digits' if data_dir is not None else ''} and probes (the same for "
            f"every variant); 'rows' is the network rows per sample a step evaluates and 'vs own "
            f"floor' the ratio to a plain DSM step on that many rows; 'rel. error vs reference' is "
            f"the relative error of the batch-mean penalty against its reference on the same "
            f"probes (anchor rows: scorefpe autograd vs anchor; fd rows: vs the autograd value); "
            f"the last column is the relative standard error of the penalty's batch mean from its "
            f"per-sample values (median over steps).\n\n"
            f"{table}\n"
            + (f"\n## Phases of one FP step\n\n{prof_text}\n" if prof_text else "")
        )
        atomic_write_text(out, text)
        click.echo(f"wrote {out}", err=True)


@bench.command("t-proposal")
@click.option("--batch-size", "batch", type=click.IntRange(min=2), default=64,
              show_default=True, help="Samples per batch.")
@click.option("--draws", type=click.IntRange(min=2), default=16, show_default=True,
              help="Independent batches per (term, proposal); the same for all of them.")
@click.option("--width", type=POS_FLOAT, default=1.0,
              show_default=True, help="U-Net width factor (1 = the papers' net).")
@click.option("--device", type=str, default="auto", show_default=True)
@click.option("--proposal", "proposals", multiple=True,
              type=click.Choice(_PROPOSALS), default=_PROPOSALS, show_default=True,
              help="Proposals of t to compare with uniform t (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Use real MNIST digits from here (default: uniform noise).")
@click.option("--md", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=output_file,
              help="Also write the table as markdown (with machine and command) to this file.")
@threads_option
@old_spelling("--batch", "--batch-size", "batch", type=click.IntRange(min=2))
@old_spelling("--out", "--md", "out", type=click.Path(dir_okay=False, path_type=Path),
              callback=output_file)
def t_proposal(batch: int, draws: int, width: float, device: str,
               proposals: tuple[str, ...], data_dir: Path | None, out: Path | None) -> None:
    """Variance of the penalty gradient per second of compute, uniform t against importance-
    sampled proposals of t, for each penalty and estimator, on the same batches, noises and
    probes (the DSM term's own gradient too: a proposal reweights it as well)."""
    from scorefpe.cli._options import resolve_device_option
    from scorefpe._util import atomic_write_text, machine_description
    from scorefpe.penalties import Estimator, Penalty
    from scorefpe.training.bench import format_variance_table, gradient_variance

    dev = resolve_device_option(device)
    images = None
    if data_dir is not None:
        try:
            from scorefpe.data.mnist import mnist_tensor

            images, _ = mnist_tensor("train", data_dir=data_dir, n=max(batch, 8192))
        except (FileNotFoundError, ValueError) as err:
            raise click.BadParameter(f"{data_dir}: {err}", param_hint="--data-dir") from None
    terms = [(Penalty.NONE, Estimator.AUTOGRAD)] + [
        (p, e) for p in (Penalty.DIV, Penalty.JAC, Penalty.FP) for e in (Estimator.AUTOGRAD, Estimator.FD)]
    props = ("uniform", *dict.fromkeys(proposals))
    click.echo(f"machine: {machine_description(dev)}", err=True)
    from tqdm.auto import tqdm

    with tqdm(total=(draws + 1) * len(props) * len(terms), unit="eval", leave=False) as bar:
        rows = gradient_variance(terms, props, batch=batch, draws=draws, width=width,
                                 device=str(dev), images=images, on_step=lambda: bar.update(1))
    table = format_variance_table(rows)
    click.echo(table)
    if out is not None:
        cmd = "scorefpe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        atomic_write_text(out, (
            f"# Penalty gradient variance per second: uniform t vs importance-sampled t\n\n"
            f"Command: `{cmd}`  \nMachine: {machine_description(dev)}  \n"
            f"Date: {datetime.date.today().isoformat()}  \n\n{table}\n"))
        click.echo(f"wrote {out}", err=True)
