"""MNIST runs of the 2026 paper: the tutorial U-Net, VP (or VE) SDE, L = L_DSM + lambda P.

Presets (``mnist_run``):

| preset | data | net width | batch | epochs | lr | EMA | t_min |
|---|---|---|---|---|---|---|---|
| paper | 60,000 train digits | 1 (32/64/128/256, 1.1 M params) | 32 | 200 | 5e-4; 1e-3 for fp/fpd | 0.999 | 1e-5 |
| smoke | first 4,096 train digits | 0.25 (8/16/32/64) | 64 | 3 | same | 0.99 | 1e-5 |
| cpu | 60,000 train digits | 0.25 (8/16/32/64) | 64 | 23 (21,551 steps) | 2e-3 (every loss) | 0.999 | 1e-5 |

The ``cpu`` preset is the paper's set-up shrunk to 15 minutes of training on 2 CPU cores
(issue 14). Its values come from the measured speed/quality trade-off of the DSM baseline in
docs/results/mnist_cpu_tradeoff.md (AMD EPYC, 1 torch thread): width 0.25 gave the best FID per
CPU-second (0.25 at 8,000 steps: FID 233; 0.5 at the same CPU time: 363), batch 64 is the
cheapest per image, lr 2e-3 trained without instability, EMA 0.999 is harmless beyond ~5,000
steps, and 0.040 CPU-s per step buys ~22,500 steps in 900 s: 23 epochs of 937 steps (21,551).
Measured there: FID 204 at 12,000 steps, ~150-170 expected at 23 epochs, so the issue's
FID <= 30 is **not** reached at this budget. One learning rate for every loss, so that the
table compares penalties, not rates (the paper preset keeps the paper's 1e-3 / 5e-4 split).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scorefpe.models import ScoreNet, ScoreNetConfig
from scorefpe.penalties import Penalty, PenaltyConfig
from scorefpe.sde import SDE, make_sde
from scorefpe.training import distributed as dd
from scorefpe.training.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint
from scorefpe.training.config import TrainConfig
from scorefpe.training.data import TensorBatches
from scorefpe.training.loop import TrainResult, train
from scorefpe.training.objective import dsm_objective

LR_DEFAULT = 5e-4
LR_FP = 1e-3  # the 2026 paper's rate for the FP penalty, following FP-Diffusion


@dataclass(frozen=True)
class MNISTRun:
    """Everything that defines an MNIST training run (saved as config.json in the run dir)."""

    preset: str
    sde: str
    model: ScoreNetConfig
    penalty: PenaltyConfig
    train: TrainConfig
    n_train: int | None  # None: all 60,000 training digits

    def to_dict(self) -> dict[str, Any]:
        pen = dataclasses.asdict(self.penalty)
        pen.update(
            penalty=self.penalty.penalty.value, probe=self.penalty.probe.value,
            omega=self.penalty.omega.value,
        )
        return {
            "task": "mnist",
            "preset": self.preset,
            "sde": self.sde,
            "model": dataclasses.asdict(self.model),
            "penalty": pen,
            "n_train": self.n_train,
        }


PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(width=1.0, n_train=None, batch_size=32, epochs=200, ema_decay=0.999,
                  checkpoint_every=5000, log_every=100),
    "smoke": dict(width=0.25, n_train=4096, batch_size=64, epochs=3, ema_decay=0.99,
                  checkpoint_every=32, log_every=8),
    # Source: docs/results/mnist_cpu_tradeoff.md, section "Recommended cpu preset" (the DSM
    # baseline's FID against CPU-seconds of training; see the module docstring).
    # grad_clip 1000: above the DSM baseline's global gradient norm (median ~250, none of its
    # steps after the first epoch clipped), so it only cuts the FP penalty's spikes (up to
    # ~4e5), which without clipping wreck DSM training at every lambda tried. Song et al.'s
    # clip at 1 acts on every step here and cost the baseline 4-5 bits/dim of NLL
    # (mnist_cpu_tradeoff.md, section 6). Every loss is clipped alike so the rows compare.
    "cpu": dict(width=0.25, n_train=None, batch_size=64, epochs=23, ema_decay=0.999,
                lr=2e-3, lr_fp=2e-3, checkpoint_every=500, log_every=50, grad_clip=1000.0),
}
"""Preset -> default settings. ``lr`` / ``lr_fp`` (optional): the Adam step of DSM and the cheap
penalties / of fp and fpd (default LR_DEFAULT / LR_FP, the 2026 paper's rates)."""


def mnist_run(
    preset: str = "smoke",
    *,
    penalty: Penalty | str = Penalty.NONE,
    lam: float = 0.0,
    sde: str = "vp",
    **overrides: Any,
) -> MNISTRun:
    """The resolved run configuration of a preset with a penalty and optional overrides.

    overrides: any TrainConfig field (lr, batch_size, epochs, max_steps, seed, device, precision,
    checkpoint_every, log_every, grad_clip, ema_decay), ``width``, ``n_train``, and the
    PenaltyConfig fields (t_min, probe, sub_batch, alpha, beta, omega, m). A None value means
    "keep the preset's"; grad_clip = math.inf means no clipping (clipping the gradient norm at
    infinity leaves every gradient as it is), so a preset's clipping can be switched off.

    Raises:
        ValueError: unknown preset, SDE, penalty, override name, or an invalid value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    make_sde(sde)  # validates the name
    base = dict(PRESETS[preset])
    pen_cfg = PenaltyConfig(penalty=penalty, lam=lam)  # validates penalty and lam
    lr, lr_fp = base.pop("lr", LR_DEFAULT), base.pop("lr_fp", LR_FP)
    base["lr"] = lr_fp if pen_cfg.penalty in (Penalty.FP, Penalty.FPD) else lr
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    pen_fields = {f.name for f in dataclasses.fields(PenaltyConfig)} - {"penalty", "lam"}
    pen_kw: dict[str, Any] = {}
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "grad_clip" and isinstance(v, float) and v == math.inf:
            base[k] = None
        elif k in train_fields or k in ("width", "n_train"):
            base[k] = v
        elif k in pen_fields:
            pen_kw[k] = v
        else:
            valid = sorted(train_fields | pen_fields | {"width", "n_train"})
            raise ValueError(f"unknown setting {k!r}; choose among {valid}")
    n_train = base.pop("n_train")
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1):
        raise ValueError(f"n_train must be a positive integer or None, got {n_train!r}")
    width = base.pop("width")
    return MNISTRun(
        preset=preset,
        sde=sde,
        model=ScoreNetConfig(width=width),
        penalty=PenaltyConfig(penalty=pen_cfg.penalty, lam=lam, **pen_kw),
        train=TrainConfig(**base),
        n_train=n_train,
    )


def build_model(run: MNISTRun) -> tuple[ScoreNet, SDE]:
    """The run's SDE and its freshly initialised U-Net (seed = the run's seed)."""
    sde = make_sde(run.sde)
    return ScoreNet(sde, run.model, seed=run.train.seed), sde


def train_mnist(
    run: MNISTRun,
    run_dir: str | Path,
    *,
    images: torch.Tensor | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    dist: dd.DistInfo | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train the run's U-Net on MNIST training digits (or on ``images``, (N, 1, 28, 28) in [0, 1]).

    Data: ``scorefpe.data.mnist.mnist_tensor("train", data_dir, n=run.n_train)`` unless images
    are given. Raises what ``train`` raises, and the loader's errors for missing/corrupt data.
    """
    if images is None:
        from scorefpe.data.mnist import mnist_tensor

        images, _ = mnist_tensor("train", data_dir=data_dir, n=run.n_train)
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"MNIST images must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
    model, sde = build_model(run)
    data = TensorBatches(images.float(), run.train.batch_size, seed=run.train.seed)
    return train(
        model, dsm_objective(sde, run.penalty), data, run.train, run_dir,
        resume=resume, run_config=run.to_dict(), dist=dist, progress=progress,
    )


def load_run(run_dir: str | Path, *, ema: bool = True) -> tuple[ScoreNet, SDE, dict[str, Any]]:
    """The trained U-Net of an MNIST run directory (EMA weights by default), its SDE and config.

    Raises:
        FileNotFoundError / ValueError: no or unreadable checkpoint / config.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {run_dir}")
    from scorefpe._util import read_json

    config = read_json(cfg_path, "config.json")
    if not isinstance(config, dict) or config.get("task") != "mnist":
        raise ValueError(f"{run_dir} is not an MNIST run (task {config.get('task')!r})")
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    sde = make_sde(config["sde"])
    model = ScoreNet(sde, ScoreNetConfig(**config["model"]), seed=0)
    model.load_state_dict(state["ema"] if ema else state["model"])
    model.eval()
    return model, sde, config
