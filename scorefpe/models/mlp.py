"""A small time-conditional MLP score network for low-dimensional data (FP-Diffusion App. D.1).

    e(t) = [sin(2 pi w_k t), cos(2 pi w_k t)]_k,   w_k log-spaced in [1, max_freq]  (fixed)
    h    = SiLU(Linear([x, e(t)]));  h = SiLU(Linear(h))  (depth - 1 times);  s = Linear(h)
    s(x, t) = s / sigma(t)   only when an SDE is given (then sigma(t) s is the predicted noise)

The embedding is deterministic and smooth in t: its largest frequency bounds |d_t e| by
2 pi max_freq, which matters for the FP residual's d_t s (a Gaussian-Fourier embedding with
scale 30, as in the image U-Net, makes d_t s of an untrained net very large).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from scorefpe.models._init import build_on_meta
from scorefpe.sde import SDE

Tensor = torch.Tensor


class SinusoidalTimeEmbedding(nn.Module):
    """[sin(2 pi w t), cos(2 pi w t)] with n_freq = embed_dim / 2 log-spaced fixed frequencies."""

    def __init__(self, embed_dim: int, max_freq: float = 16.0) -> None:
        super().__init__()
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be an even integer >= 2, got {embed_dim}")
        if not (max_freq >= 1.0 and math.isfinite(max_freq)):
            raise ValueError(f"max_freq must be >= 1 and finite, got {max_freq!r}")
        self.n_freq = embed_dim // 2
        self.max_freq = float(max_freq)
        self.register_buffer("freqs", torch.empty(self.n_freq))

    def reset_parameters_from(self, gen: torch.Generator) -> None:  # noqa: ARG002 - no randomness
        self.freqs.copy_(torch.logspace(0.0, math.log10(self.max_freq), self.n_freq))

    def forward(self, t: Tensor) -> Tensor:
        proj = t[:, None] * self.freqs[None, :].to(t.dtype) * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


@dataclass(frozen=True)
class MLPConfig:
    """dim: data dimension D; hidden width, depth (number of hidden layers), embed_dim, max_freq."""

    dim: int
    hidden: int = 128
    depth: int = 3
    embed_dim: int = 32
    max_freq: float = 16.0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "depth", "embed_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {self.embed_dim}")


class MLPScoreNet(nn.Module):
    """Time-conditional MLP score model for x of shape (B, D).

    Args:
        config: sizes (``MLPConfig``).
        sde: when given, the output is divided by sde.marginal_std(t) (Song's parametrisation);
            when None the network output is the score itself.
        seed: parameters are a deterministic function of the seed (global RNG untouched).

    forward(x, t): x (B, D), t (B,) -> (B, D). Cost: about 2 (D + E) H + 2 (depth-1) H^2 + 2 H D
    FLOPs per sample (H hidden, E embed_dim).
    Raises ValueError for other input shapes.
    """

    def __init__(self, config: MLPConfig, sde: SDE | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.sde = sde
        c = config

        def make() -> nn.ModuleDict:
            layers = [nn.Linear(c.dim + c.embed_dim, c.hidden)]
            layers += [nn.Linear(c.hidden, c.hidden) for _ in range(c.depth - 1)]
            return nn.ModuleDict(
                dict(
                    embed=SinusoidalTimeEmbedding(c.embed_dim, c.max_freq),
                    hidden=nn.ModuleList(layers),
                    out=nn.Linear(c.hidden, c.dim),
                )
            )

        self.net = build_on_meta(make, seed)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(
                f"MLPScoreNet expects x of shape (B, {self.config.dim}), got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        h = torch.cat([x, self.net.embed(t).to(x.dtype)], dim=-1)
        for layer in self.net.hidden:
            h = nn.functional.silu(layer(h))
        out = self.net.out(h)
        if self.sde is not None:
            out = out / self.sde.marginal_std(t).to(out.dtype)[:, None]
        return out
