"""`scorefpe bench penalties`: training-step time and memory of each penalty against plain DSM."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmarks."""


@bench.command("penalties")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True,
              help="Timed steps per variant (median reported).")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="U-Net width factor (1 = the papers' net).")
@click.option("--sub-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Also time DIV/JAC/FP evaluated on this many samples of the batch.")
@click.option("--device", type=str, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's current setting).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Use real MNIST digits from here (default: uniform noise; cost is the same).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table as markdown (with machine and command) to this file.")
def penalties(
    batch: int, repeats: int, width: float, sub_batch: int, device: str, threads: int | None,
    data_dir: Path | None, out: Path | None,
) -> None:
    """Median training-step time (forward, penalty, backward, Adam) and autograd memory of
    DSM + each penalty, as ratios to plain DSM, on one batch in this process."""
    import torch

    from scorefpe.cli._options import resolve_device_option
    from scorefpe._util import atomic_write_text, machine_description
    from scorefpe.training.bench import bench_penalties, default_variants, format_table

    dev = resolve_device_option(device)
    if threads is not None:
        torch.set_num_threads(threads)
    images = None
    if data_dir is not None:
        try:
            from scorefpe.data.mnist import mnist_tensor

            # More digits than one batch: each timed step draws its own batch.
            images, _ = mnist_tensor("train", data_dir=data_dir, n=max(batch, 8192))
        except (FileNotFoundError, ValueError) as err:
            raise click.BadParameter(f"{data_dir}: {err}", param_hint="--data-dir") from None
    variants = default_variants(batch, sub_batch)
    click.echo(f"machine: {machine_description(dev)}", err=True)
    from tqdm.auto import tqdm

    with tqdm(total=len(variants) * (repeats + 2), unit="step", leave=False) as bar:
        rows = bench_penalties(variants, batch=batch, repeats=repeats, width=width, device=device,
                               images=images, on_step=lambda: bar.update(1))
    table = format_table(rows)
    click.echo(table)
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
            f"every variant); the last column is the relative standard error of the penalty's batch "
            f"mean from its per-sample values (median over steps).\n\n"
            f"{table}\n"
        )
        atomic_write_text(out, text)
        click.echo(f"wrote {out}", err=True)
