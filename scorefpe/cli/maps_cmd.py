"""`scorefpe maps RUN_DIR...`: score and divergence maps of one test digit over noise levels,
averaged over noise draws (the 2026 paper's Figs. 2-5)."""

from __future__ import annotations

from pathlib import Path

import click

from scorefpe.cli._options import output_dir, parse_floats, positive_int, threads_option
from scorefpe.cli.evaluate_cmd import _run_dir


@click.command("maps")
@click.argument("run_dirs", nargs=-1, required=True,
                callback=lambda c, p, v: [_run_dir(c, p, x) for x in v])
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              callback=output_dir, help="Directory for maps.npz, maps.json and the maps_*.png figures.")
@click.option("--digit-index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the MNIST test image x0.")
@click.option("--times", type=str, default=None, callback=parse_floats,
              help="Comma-separated times (default: the paper's 1e-4,1e-3,0.01,0.03,0.05,0.1,"
                   "0.2,0.4,0.6,0.8,1).")
@click.option("--n-noise", type=int, default=200, show_default=True, callback=positive_int,
              help="Noise draws per time for the averaged maps.")
@click.option("--method", type=click.Choice(["hutchinson", "exact"]), default="hutchinson",
              show_default=True,
              help="Jacobian diagonal of the averaged maps: exact (784 VJPs per draw) or "
                   "Hutchinson (--n-probes VJPs per draw). The one-draw maps are always exact.")
@click.option("--n-probes", type=int, default=64, show_default=True, callback=positive_int,
              help="Rademacher probes per draw (hutchinson).")
@click.option("--batch-size", type=int, default=16, show_default=True, callback=positive_int,
              help="Noise draws per backward pass (memory ~ batch x probes images).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the noise draws (the same draws for every run).")
@threads_option
def maps(run_dirs: list[Path], out: Path, digit_index: int, times: tuple[float, ...] | None,
         n_noise: int, method: str, n_probes: int, batch_size: int, seed: int) -> None:
    """Score s, sigma s, ds_i/dx_i and sigma^2 ds_i/dx_i of one test digit over t, for one noise
    draw and averaged over --n-noise draws, for each run and side by side (rows = runs)."""
    from scorefpe._util import run_labels
    from scorefpe.data.mnist import mnist_tensor
    from scorefpe.evaluation.maps import PAPER_TIMES, MapConfig, maps_for_runs

    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{str(out)!r} exists and is not a directory", param_hint="--out")
    try:
        run_labels(run_dirs)  # before any data is looked for
        cfg = MapConfig(times=times or PAPER_TIMES, n_noise=n_noise, method=method,
                        n_probes=n_probes, batch_size=batch_size, seed=seed)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        images, labels = mnist_tensor("test")
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    if digit_index >= images.shape[0]:
        raise click.BadParameter(f"{digit_index} is out of range: the test set has "
                                 f"{images.shape[0]} images", param_hint="--digit-index")
    click.echo(f"[maps] x0 = test image {digit_index} (label {int(labels[digit_index])})", err=True)
    try:
        paths = maps_for_runs(run_dirs, images[digit_index], out, cfg, progress=True,
                              echo=lambda m: click.echo(f"[maps] {m}", err=True))
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
