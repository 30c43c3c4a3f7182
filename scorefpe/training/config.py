"""Configuration of the generic training loop (a frozen dataclass, validated on construction)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch

from scorefpe._util import parse_choice


class Precision(str, Enum):
    """Arithmetic of the forward/backward passes: full float32, or autocast to bf16 / fp16.

    fp16 uses a gradient scaler (CUDA). Derivative penalties (JAC, DIV, FP) take second
    derivatives through the network: in reduced precision their values lose several digits.
    """

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


def _pos_int(name: str, v: Any, allow_zero: bool = False) -> None:
    lo = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one run.

    lr: Adam step size (5e-4 for DSM and the cheap penalties, 1e-3 for FP: 2026 paper, Sec. IV).
    batch_size: global batch (split evenly among data-parallel processes).
    epochs: passes over the data (an epoch = the data source's steps_per_epoch steps).
    max_steps: stop after this many optimizer steps in total (None: run all epochs); a stopped run
        resumes exactly with ``resume=True``.
    ema_decay: EMA of the parameters (0 disables averaging: the EMA equals the weights).
    seed: every random draw of the run (init is the model's own seed) derives from it.
    device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
    precision: fp32 / bf16 / fp16 autocast.
    checkpoint_every: also checkpoint every this many steps (0: only at epoch ends).
    log_every: write a step record to metrics.jsonl every this many steps.
    grad_clip: clip the global gradient norm to this value (None: no clipping).
    """

    lr: float = 5e-4
    batch_size: int = 64
    epochs: int = 1
    max_steps: int | None = None
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    precision: Precision = Precision.FP32
    checkpoint_every: int = 1000
    log_every: int = 10
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", parse_choice(Precision, self.precision, "precision"))
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive and finite, got {self.lr!r}")
        _pos_int("batch_size", self.batch_size)
        _pos_int("epochs", self.epochs)
        if self.max_steps is not None:
            _pos_int("max_steps", self.max_steps)
        if not (0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        _pos_int("seed", self.seed, allow_zero=True)
        _pos_int("checkpoint_every", self.checkpoint_every, allow_zero=True)
        _pos_int("log_every", self.log_every)
        if self.grad_clip is not None and not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise ValueError(f"grad_clip must be positive and finite or None, got {self.grad_clip!r}")
        resolve_device(self.device)  # validates the spelling; availability is checked at run time

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precision"] = self.precision.value
        return d


# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "log_every", "checkpoint_every", "device"})


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:local_rank when CUDA is available, else cpu; otherwise torch.device(spec).

    Raises:
        ValueError: a spelling that is not auto/cpu/cuda/cuda:N, or CUDA asked for but absent
            (only checked for explicit "cuda" specs when this is called at run time).
    """
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        return torch.device(spec if spec != "cuda" else f"cuda:{local_rank}")
    raise ValueError(f"unknown device {spec!r}; choose 'auto', 'cpu', 'cuda' or 'cuda:N'")
