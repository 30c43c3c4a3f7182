"""A LeNet-5 style MNIST classifier: the feature extractor for FID and the classifier for entropy.

Architecture (input (N, 1, 28, 28) in [0, 1], normalised inside by MNIST's mean 0.1307 and std
0.3081):

    conv 5x5, 1 -> 6, padding 2, ReLU, max-pool 2   -> (6, 14, 14)
    conv 5x5, 6 -> 16, ReLU, max-pool 2             -> (16, 5, 5)
    fc 400 -> 120, ReLU
    fc 120 -> 84, ReLU                               <- features: these 84 activations
    fc 84 -> 10                                      -> logits; softmax gives class probabilities

`lenet_features` returns the 84-d penultimate activations (after the ReLU, so some entries are
0); `lenet_probs` the softmax of the logits. Both in float64 on the CPU.

Weights are created from a seed (no global random state), trained by `train_lenet`, saved by
`save_lenet` with a SHA-256 checksum file beside them (`<file>.sha256`, in `sha256sum` format)
and loaded by `load_lenet`, which refuses a file whose checksum does not match.

One feature extractor for everyone: the package ships trained weights, `lenet_mnist.pt` beside
this module (`shipped_lenet_path()`, written by `scorefpe lenet train`, test accuracy 99.24 %;
docs/metrics.md), and `load_lenet()` without a path loads that file after checking its SHA-256
against SHIPPED_LENET_SHA256, so every machine scores samples with the same weights (training
on another CPU gives other weights and FIDs a few percent apart). `scorefpe lenet train`
writes to `$SCOREFPE_CACHE/lenet/lenet.pt` (`cache_lenet_path()`, `~/.cache/scorefpe/...`
when unset): an override that is used only when its path is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from scorefpe._util import atomic_write_bytes, cpu_name

Tensor = torch.Tensor

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
FEATURE_DIM = 84
N_CLASSES = 10
FORMAT = "scorefpe-lenet-v1"
SHIPPED_LENET_NAME = "lenet_mnist.pt"
# SHA-256 of the shipped file's bytes. Published numbers name it (docs/metrics.md); replacing the
# shipped weights is a change of this constant, not a silent file swap.
SHIPPED_LENET_SHA256 = "dc53140e649f9356bffcf422562ad103971821ccf89cd97445cb3d0543829ef4"

__all__ = [
    "FEATURE_DIM",
    "ChecksumError",
    "LeNet",
    "LeNetTrainConfig",
    "LeNetTrainResult",
    "SHIPPED_LENET_SHA256",
    "cache_lenet_path",
    "default_lenet_path",
    "file_sha256",
    "lenet_accuracy",
    "lenet_features",
    "lenet_probs",
    "lenet_train_record",
    "load_lenet",
    "save_lenet",
    "shipped_lenet_path",
    "train_lenet",
    "weights_sha256",
]


class ChecksumError(ValueError):
    """The weights file does not match its .sha256 checksum (corrupt or replaced)."""


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class LeNet(nn.Module):
    """LeNet-5 style classifier; see the module docstring for the layers.

    LeNet(seed) initialises the weights like PyTorch's defaults (Kaiming-uniform with a = sqrt 5,
    biases uniform in +-1/sqrt(fan_in)) from torch.Generator().manual_seed(seed), without
    touching the global random state. `num_features` = 84 (so that torchmetrics' FID accepts
    the module). `meta` holds the training record of a loaded model.
    """

    num_features = FEATURE_DIM

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        # Built on the meta device so that construction draws nothing from the global RNG.
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2, device="meta")
        self.conv2 = nn.Conv2d(6, 16, 5, device="meta")
        self.fc1 = nn.Linear(16 * 5 * 5, 120, device="meta")
        self.fc2 = nn.Linear(120, FEATURE_DIM, device="meta")
        self.fc3 = nn.Linear(FEATURE_DIM, N_CLASSES, device="meta")
        self.to_empty(device="cpu")
        g = torch.Generator().manual_seed(int(seed))
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2, self.fc3):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=g)
            fan_in = layer.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(layer.bias, -bound, bound, generator=g)
        self.meta: dict[str, Any] = {}

    def features(self, x: Tensor) -> Tensor:
        """84-d penultimate activations relu(fc2(.)), shape (N, 84). x: (N, 1, 28, 28) in [0, 1]."""
        x = (x - MNIST_MEAN) / MNIST_STD
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.relu(self.fc2(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, 10)."""
        return self.fc3(self.features(x))


# --------------------------------------------------------------------------------------------
# Inputs and inference
# --------------------------------------------------------------------------------------------
def _as_images(images: Tensor, name: str = "images") -> Tensor:
    """(N, 28, 28) or (N, 1, 28, 28); uint8 (0..255) or float in [0, 1] -> float32 (N, 1, 28, 28)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28) or images.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, 28, 28) or (N, 1, 28, 28), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 or floating point, got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must have values in [0, 1], got range [{lo:.4g}, {hi:.4g}] "
            "(clamp generated samples or rescale [-1, 1] data first)"
        )
    return images.detach().to(torch.float32)


def _batched(model: LeNet, images: Tensor, batch_size: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = _as_images(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for lo in range(0, x.shape[0], batch_size):
                out.append(fn(x[lo : lo + batch_size].to(device)).to("cpu", torch.float64))
    finally:
        model.train(was_training)
    return torch.cat(out)


def lenet_features(model: LeNet, images: Tensor, *, batch_size: int = 1000) -> Tensor:
    """84-d penultimate activations (after ReLU) of images, shape (N, 84), float64.

    images: (N, 28, 28) or (N, 1, 28, 28), uint8 or float in [0, 1]. Cost: one forward pass
    per image (about 0.4 MFLOP). Raises ValueError on other shapes or values outside [0, 1].
    """
    return _batched(model, images, batch_size, model.features)


def lenet_probs(model: LeNet, images: Tensor, *, batch_size: int = 1000) -> Tensor:
    """Softmax class probabilities of images, shape (N, 10), float64 (rows sum to 1)."""
    return _batched(model, images, batch_size, lambda x: F.softmax(model(x).double(), dim=1))


def lenet_accuracy(model: LeNet, images: Tensor, labels: Tensor, *, batch_size: int = 1000) -> float:
    """Fraction of images whose argmax class equals the label. Raises ValueError on a length mismatch."""
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    logits = _batched(model, images, batch_size, model)
    return float((logits.argmax(1) == labels.to("cpu").long()).double().mean())


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeNetTrainConfig:
    """Training recipe: Adam(lr, weight_decay), cross-entropy, batch_size, a cosine decay of the
    learning rate to 0 over all steps, reshuffled every epoch from `seed` (the same seed also
    initialises the weights)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class LeNetTrainResult:
    """The trained model (in eval mode) and one record per epoch: epoch, mean training loss,
    training accuracy, seconds, and (when evaluation data was given) eval_accuracy."""

    model: LeNet
    history: list[dict[str, float]]


def train_lenet(
    images: Tensor,
    labels: Tensor,
    config: LeNetTrainConfig = LeNetTrainConfig(),
    *,
    eval_images: Tensor | None = None,
    eval_labels: Tensor | None = None,
    progress: bool = False,
) -> LeNetTrainResult:
    """Train a LeNet on (images (N, [1,] 28, 28) in [0, 1] or uint8, labels (N,) in 0..9).

    Deterministic on the CPU for a fixed seed and thread count: weights from LeNet(seed),
    shuffling from a seeded torch.Generator, and torch.use_deterministic_algorithms(True) for
    the duration of the call (the previous setting is restored). Thread count can change the
    order of floating-point sums, so record it beside the result.

    Cost: epochs * N forward+backward passes (~1.2 MFLOP per image). With eval data, one extra
    forward pass over it per epoch.

    Raises:
        ValueError: bad shapes, labels outside 0..9, eval data given only half.
    """
    x = _as_images(images)
    y = labels.to(torch.long)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= N_CLASSES:
        raise ValueError(f"labels must lie in 0..{N_CLASSES - 1}, got [{int(y.min())}, {int(y.max())}]")
    if (eval_images is None) != (eval_labels is None):
        raise ValueError("give both eval_images and eval_labels, or neither")

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = LeNet(seed=config.seed)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        n = x.shape[0]
        steps_per_epoch = math.ceil(n / config.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
        g = torch.Generator().manual_seed(int(config.seed) + 1)
        history: list[dict[str, float]] = []
        bar = tqdm(total=config.epochs * steps_per_epoch, disable=not progress, desc="LeNet", unit="batch")
        with bar:
            for epoch in range(1, config.epochs + 1):
                model.train()
                t0 = time.perf_counter()
                perm = torch.randperm(n, generator=g)
                loss_sum, correct = 0.0, 0
                for lo in range(0, n, config.batch_size):
                    idx = perm[lo : lo + config.batch_size]
                    logits = model(x[idx])
                    loss = F.cross_entropy(logits, y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    loss_sum += float(loss.detach()) * idx.numel()
                    correct += int((logits.argmax(1) == y[idx]).sum())
                    bar.update(1)
                record = {
                    "epoch": epoch,
                    "loss": loss_sum / n,
                    "train_accuracy": correct / n,
                    "seconds": time.perf_counter() - t0,
                }
                if eval_images is not None:
                    record["eval_accuracy"] = lenet_accuracy(model, eval_images, eval_labels)
                    bar.set_postfix(eval_acc=f"{record['eval_accuracy']:.4f}")
                history.append(record)
        model.eval()
        return LeNetTrainResult(model, history)
    finally:
        torch.use_deterministic_algorithms(previous)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def shipped_lenet_path() -> Path:
    """The trained weights shipped inside the package (package data beside this module)."""
    return Path(__file__).with_name(SHIPPED_LENET_NAME)


def default_lenet_path() -> Path:
    """The weights `load_lenet()` reads without a path: the shipped file."""
    return shipped_lenet_path()


def cache_lenet_path() -> Path:
    """$SCOREFPE_CACHE/lenet/lenet.pt, or ~/.cache/scorefpe/lenet/lenet.pt when unset: where
    `scorefpe lenet train` writes by default (used for metrics only when its path is given)."""
    root = os.environ.get("SCOREFPE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "scorefpe"
    return base / "lenet" / "lenet.pt"


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model: LeNet) -> str:
    """Hex SHA-256 of the parameters alone (names, shapes and float32 bytes in state-dict order).

    Two trainings with the same seed and thread count give the same digest, while the file's
    checksum also covers the recorded timings in `meta`.
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_lenet(model: LeNet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write the weights and `meta` to `path` and its checksum to `path.sha256`, each atomically
    (temporary file, then rename). Returns the path.

    Raises:
        ValueError: meta holds values JSON cannot represent.
    """
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    try:  # plain JSON values only, so that torch.load(weights_only=True) reads them back
        meta = json.loads(json.dumps(dict(meta or {})))
    except TypeError as err:
        raise ValueError(f"meta must hold JSON values (str, number, list, dict): {err}") from err
    torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    atomic_write_bytes(_checksum_path(path), f"{digest}  {path.name}\n".encode())
    return path


def load_lenet(path: str | os.PathLike | None = None, *, sha256: str | None = None,
               device: torch.device | str = "cpu") -> LeNet:
    """Load a LeNet saved by `save_lenet`, in eval mode: without a path the shipped weights
    (`shipped_lenet_path()`, checked against SHIPPED_LENET_SHA256), else the file at ``path``.

    The file's SHA-256 must equal ``sha256`` when given, else the one in `<path>.sha256`. The
    training record is in `model.meta` (test accuracy, epochs, seconds, seed, threads, torch
    version). Cost: one hash of a ~250 KB file.

    Raises:
        FileNotFoundError: weights or checksum file missing (train with `scorefpe lenet train`).
        ChecksumError: the checksum does not match.
        ValueError: the file is not a scorefpe LeNet.
    """
    if path is None:
        path, sha256 = shipped_lenet_path(), sha256 or SHIPPED_LENET_SHA256
    path = Path(path)
    sums = _checksum_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LeNet weights at {path}; train them with `scorefpe lenet train`")
    if sha256 is not None:
        expected, source = sha256.lower(), "expected"
    else:
        if not sums.is_file():
            raise FileNotFoundError(
                f"no checksum file {sums} beside the weights; retrain or restore it")
        fields = sums.read_text().split()
        expected, source = (fields[0].lower() if fields else ""), f"{sums.name} says"
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {path}: file {actual}, {source} {expected or '(empty)'}"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scorefpe LeNet file (format {FORMAT!r})")
    model = LeNet()
    model.load_state_dict(blob["state_dict"])
    model.meta = dict(blob.get("meta", {}))
    return model.to(device).eval()


def config_dict(config: LeNetTrainConfig) -> dict[str, Any]:
    """The training configuration as a plain dict (for the saved record)."""
    return asdict(config)


def lenet_train_record(result: LeNetTrainResult, config: LeNetTrainConfig, *, n_train: int,
                       n_test: int, seconds: float) -> dict[str, Any]:
    """The metadata saved beside trained weights (`save_lenet`'s ``meta``): final test accuracy
    (the last epoch's eval_accuracy), set sizes, configuration, per-epoch history, training
    seconds, torch threads and version, CPU model, what the features are, and the weights'
    digest (`weights_sha256`).

    Raises:
        ValueError: the history holds no epoch with an eval_accuracy (train without eval data).
    """
    if not result.history or "eval_accuracy" not in result.history[-1]:
        raise ValueError("the training history has no eval_accuracy: train with eval data")
    return {
        "test_accuracy": result.history[-1]["eval_accuracy"],
        "n_train": int(n_train),
        "n_test": int(n_test),
        "config": config_dict(config),
        "history": result.history,
        "train_seconds": seconds,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "cpu": cpu_name(),
        "features": "relu(fc2): 84-d penultimate activations",
        "weights_sha256": weights_sha256(result.model),
    }
