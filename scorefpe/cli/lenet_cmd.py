"""`scorefpe lenet train|eval`: the LeNet feature extractor / classifier used by the MNIST metrics."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from scorefpe.cli._options import POS_FLOAT, old_spelling, output_file, threads_option


def _load_split(split: str, data_dir: str | None):
    try:
        from scorefpe.data.mnist import mnist_tensor
    except ImportError as err:  # the MNIST loader is a separate module of the package
        raise click.ClickException(f"scorefpe.data.mnist is not available: {err}") from err
    try:
        return mnist_tensor(split, data_dir=data_dir)
    except FileNotFoundError as err:  # DataNotFoundError: its message says how to fetch
        raise click.UsageError(f"MNIST {split} split not found: {err}") from err
    except ValueError as err:  # DataError: a corrupt file, named in the message
        raise click.UsageError(f"MNIST {split} split unreadable: {err}") from err


@click.group()
def lenet() -> None:
    """Train or inspect the LeNet classifier whose 84-d features give FID, Density, Coverage."""


@lenet.command("train")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="MNIST directory (default: the scorefpe cache).")
@click.option("--weights", "out_path", type=click.Path(dir_okay=False), default=None,
              callback=output_file,
              help="Weights file to write (default: $SCOREFPE_CACHE/lenet/lenet.pt); "
                   "FILE.sha256 is written beside it. The metrics use the weights shipped in "
                   "the package unless given this file's path.")
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=POS_FLOAT, default=2e-3, show_default=True,
              help="Peak Adam learning rate (cosine decay to 0).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="Write nothing and exit 1 if the test accuracy ends below this.")
@click.option("--force", is_flag=True, help="Overwrite an existing weights file.")
@threads_option
@old_spelling("--out", "--weights", "out_path", type=click.Path(dir_okay=False), callback=output_file)
def train(data_dir: str | None, out_path: str | None, epochs: int, batch_size: int, lr: float,
          seed: int, min_accuracy: float, force: bool) -> None:
    """Train LeNet on the MNIST training set, report test accuracy, save weights + checksum."""
    import torch

    from scorefpe.metrics.lenet import (
        LeNetTrainConfig,
        cache_lenet_path,
        file_sha256,
        lenet_train_record,
        save_lenet,
        train_lenet,
    )

    out = Path(out_path) if out_path is not None else cache_lenet_path()
    if out.exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to overwrite it")
    if out.suffix == ".sha256":
        raise click.BadParameter(f"{str(out)!r} is the checksum name; give the weights file",
                                 param_hint="--out")
    config = LeNetTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)

    x_train, y_train = _load_split("train", data_dir)
    x_test, y_test = _load_split("test", data_dir)
    click.echo(f"LeNet: train {x_train.shape[0]} images, test {x_test.shape[0]}, "
               f"threads {torch.get_num_threads()}, {config}")
    t0 = time.perf_counter()
    try:
        result = train_lenet(x_train, y_train, config, eval_images=x_test, eval_labels=y_test,
                             progress=True)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    seconds = time.perf_counter() - t0
    for rec in result.history:
        click.echo(f"epoch {rec['epoch']:3d}  loss {rec['loss']:.4f}  train acc {rec['train_accuracy']:.4f}  "
                   f"test acc {rec['eval_accuracy']:.4f}  {rec['seconds']:.1f} s")
    acc = result.history[-1]["eval_accuracy"]
    click.echo(f"test accuracy {acc:.4f} ({x_test.shape[0]} images), training time {seconds:.1f} s")
    if acc < min_accuracy:
        click.echo(f"test accuracy {acc:.4f} is below --min-accuracy {min_accuracy}; nothing written",
                   err=True)
        sys.exit(1)
    meta = lenet_train_record(result, config, n_train=x_train.shape[0], n_test=x_test.shape[0],
                              seconds=seconds)
    save_lenet(result.model, out, meta)
    click.echo(f"weights sha256 {meta['weights_sha256']} (parameters only; same seed and threads "
               "give the same digest)")
    click.echo(f"wrote {out} (file sha256 {file_sha256(out)}) and {out.name}.sha256")


@lenet.command("eval")
@click.option("--weights", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Weights file (default: the weights shipped in the package).")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="MNIST directory (default: the scorefpe cache).")
@click.option("--floor-n", type=click.IntRange(min=0, max=60000), default=10000, show_default=True,
              help="Also compute FID, Density, Coverage and class entropy of the first N training "
                   "images against the test set (the real-data floor of the sample metrics); 0 skips.")
@threads_option
@old_spelling("--model", "--weights", "model_path", type=click.Path(dir_okay=False))
def evaluate(model_path: str | None, data_dir: str | None, floor_n: int) -> None:
    """Verify a saved LeNet's checksum; report its MNIST test accuracy and real-data metric floor."""
    from scorefpe.metrics.lenet import (
        default_lenet_path,
        lenet_accuracy,
        load_lenet,
        weights_sha256,
    )
    from scorefpe.metrics.sample_quality import real_data_floor

    path = Path(model_path) if model_path is not None else default_lenet_path()
    try:
        model = load_lenet(path if model_path is not None else None)
    except (FileNotFoundError, ValueError) as err:  # ChecksumError is a ValueError
        raise click.UsageError(str(err)) from err
    click.echo(f"{path}: checksum OK; weights sha256 {weights_sha256(model)}")
    meta = model.meta
    if meta:
        seconds = meta.get("train_seconds", float("nan"))
        click.echo(f"recorded: test accuracy {meta.get('test_accuracy')}, epochs "
                   f"{meta.get('config', {}).get('epochs')}, {seconds:.1f} s, "
                   f"threads {meta.get('threads')}, torch {meta.get('torch')}, cpu {meta.get('cpu')}")
    x_test, y_test = _load_split("test", data_dir)
    acc = lenet_accuracy(model, x_test, y_test)
    click.echo(f"test accuracy {acc:.4f} ({x_test.shape[0]} images)")
    if floor_n == 0:
        return
    x_train, _ = _load_split("train", data_dir)
    try:
        fl = real_data_floor(model, x_train[:floor_n], x_test, k=5)
    except ValueError as err:
        raise click.UsageError(f"--floor-n {floor_n}: {err}") from err
    click.echo(f"real-data floor, first {floor_n} training images vs the {fl.n_test} test images "
               f"({fl.seconds:.1f} s):")
    click.echo(f"  FID(LeNet) {fl.fid:.4f}   density {fl.density:.4f}   coverage {fl.coverage:.4f} "
               f"(k={fl.k})")
    click.echo(f"  class entropy (hard labels, nats; max ln 10 = 2.3026): training subset "
               f"{fl.entropy_real:.4f}, test {fl.entropy_test:.4f}")
