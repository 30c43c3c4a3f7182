"""Training machinery: a generic loop (Adam, EMA, atomic checkpoints, exact resume, NaN stop,
JSON-lines metrics, DDP), the DSM(+penalty) objective, and the MNIST presets of the 2026 paper.

Typical use (MNIST)::

    from scorefpe.training import mnist_run, train_mnist
    run = mnist_run("smoke", penalty="div", lam=1e-3)
    train_mnist(run, "runs/div", data_dir=None, progress=True)

Low-dimensional data (issue 4) uses the same loop with ``SampledBatches``::

    train(model, dsm_objective(sde, PenaltyConfig(..., t_min=1e-3)),
          SampledBatches(dataset.sample, 500, steps_per_epoch=100), TrainConfig(lr=1e-3), out)
"""

from scorefpe.training.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from scorefpe.training.config import Precision, TrainConfig, resolve_device
from scorefpe.training.data import BatchSource, SampledBatches, TensorBatches
from scorefpe.training.distributed import DistInfo, init_from_env
from scorefpe.training.ema import EMA
from scorefpe.training.loop import NonFiniteLossError, TrainResult, train
from scorefpe.training.mnist_unet import PRESETS, MNISTRun, build_model, load_run, mnist_run, train_mnist
from scorefpe.training.objective import DSMWeighting, dsm_objective, dsm_time_weight
from scorefpe.training.randomness import StepContext, derive_seed

__all__ = [
    "BatchSource", "DSMWeighting", "DistInfo", "EMA", "MNISTRun", "NonFiniteLossError", "PRESETS", "Precision",
    "SampledBatches", "StepContext", "TensorBatches", "TrainConfig", "TrainResult",
    "atomic_write_json", "build_model", "derive_seed", "dsm_objective", "dsm_time_weight", "init_from_env",
    "load_checkpoint", "load_run", "mnist_run", "resolve_device", "save_checkpoint", "train",
    "train_mnist",
]
