"""The MNIST score network of Song's score-SDE tutorial (the U-Net of both papers' MNIST runs).

Architecture (Song et al., score_sde tutorial notebook, "ScoreNet"), for x of shape (B, 1, 28, 28):

    emb  = SiLU(Linear(GaussianFourier(t)))                        (embed_dim = 256)
    h1 = SiLU(GN( 4, conv3x3 s1 (1  -> c0)(x)  + Dense(emb)))      28 -> 26
    h2 = SiLU(GN(32, conv3x3 s2 (c0 -> c1)(h1) + Dense(emb)))      26 -> 12
    h3 = SiLU(GN(32, conv3x3 s2 (c1 -> c2)(h2) + Dense(emb)))      12 -> 5
    h4 = SiLU(GN(32, conv3x3 s2 (c2 -> c3)(h3) + Dense(emb)))       5 -> 2
    h  = SiLU(GN(32, tconv s2 (c3 -> c2)(h4)           + Dense(emb)))   2 -> 5
    h  = SiLU(GN(32, tconv s2 (2 c2 -> c1)([h, h3])    + Dense(emb)))   5 -> 12
    h  = SiLU(GN(32, tconv s2 (2 c1 -> c0)([h, h2])    + Dense(emb)))  12 -> 26
    h  =             tconv s1 (2 c0 -> 1)([h, h1])                       26 -> 28
    s(x, t) = h / sigma(t),  sigma(t) = sqrt(v(t)) the SDE's marginal std

with (c0, c1, c2, c3) = width * (32, 64, 128, 256), rounded, and convolutions without bias
except the last, as in the tutorial. The group counts are the tutorial's at width 1 (4, then 32)
and scale with the width so that each group keeps the tutorial's number of channels (a divisor
of the channel count, at least one group). The time embedding's frequencies W ~ N(0, 30^2) are
fixed (a buffer, not trained).

A quirk kept from the tutorial: the last decoder norm (tgnorm2) has one channel per group, so it
removes the per-channel time shift dense7(emb) exactly; dense7's weights receive only round-off
gradients (Adam still moves them by up to lr per step, with no effect on the output).

Dividing by sigma(t) makes sigma(t) s = h the predicted (negative) noise, the quantity the
sigma-weighted DSM loss (2026 paper, eq. 7) fits. GroupNorm has no batch statistics, so samples
are independent: the operators' replicated-batch evaluations and DDP sharding are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from scorefpe.models._init import build_on_meta
from scorefpe.sde import SDE

Tensor = torch.Tensor


class GaussianFourierProjection(nn.Module):
    """[sin(2 pi W t), cos(2 pi W t)] with fixed W ~ N(0, scale^2), shape (B,) -> (B, embed_dim)."""

    def __init__(self, embed_dim: int, scale: float = 30.0) -> None:
        super().__init__()
        if embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be an even integer >= 2, got {embed_dim}")
        self.scale = float(scale)
        self.register_buffer("W", torch.empty(embed_dim // 2))

    def reset_parameters_from(self, gen: torch.Generator) -> None:
        self.W.copy_(torch.randn(self.W.shape, generator=gen) * self.scale)

    def forward(self, t: Tensor) -> Tensor:
        proj = t[:, None] * self.W[None, :].to(t.dtype) * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def _groups(tutorial_groups: int, tutorial_channels: int, channels: int) -> int:
    """GroupNorm groups keeping the tutorial's channels per group at any width.

    Scaling only the channels would leave 32 groups on a narrow layer, i.e. one channel per
    group: the normalisation then removes the per-channel time shift Dense(emb) exactly and the
    layer loses its time conditioning (its Dense weights get only round-off gradients).
    """
    target = max(1, round(tutorial_groups * channels / tutorial_channels))
    return max(g for g in range(1, min(target, channels) + 1) if channels % g == 0)


@dataclass(frozen=True)
class ScoreNetConfig:
    """Size of the tutorial U-Net. width scales (32, 64, 128, 256); width=1 is the papers' net."""

    width: float = 1.0
    embed_dim: int = 256
    fourier_scale: float = 30.0

    def __post_init__(self) -> None:
        if not (self.width > 0 and math.isfinite(self.width)):
            raise ValueError(f"width must be positive and finite, got {self.width!r}")
        if self.embed_dim < 2 or self.embed_dim % 2:
            raise ValueError(f"embed_dim must be an even integer >= 2, got {self.embed_dim!r}")
        if not (self.fourier_scale > 0 and math.isfinite(self.fourier_scale)):
            raise ValueError(f"fourier_scale must be positive, got {self.fourier_scale!r}")

    @property
    def channels(self) -> tuple[int, int, int, int]:
        return tuple(max(1, round(c * self.width)) for c in (32, 64, 128, 256))  # type: ignore[return-value]


class ScoreNet(nn.Module):
    """Time-conditional U-Net score model s_theta(x, t) for (B, 1, 28, 28) images.

    Args:
        sde: supplies sigma(t) = sde.marginal_std(t), by which the network output is divided.
        config: width / embedding size (``ScoreNetConfig``).
        seed: parameters are a deterministic function of the seed (global RNG untouched).

    forward(x, t): x (B, 1, 28, 28), t (B,) in (0, T] -> (B, 1, 28, 28), in x's dtype.
    Cost per call: about 33 MFLOP per image at width 1 (1,115,297 parameters).
    Raises ValueError for other input shapes.
    """

    def __init__(self, sde: SDE, config: ScoreNetConfig | None = None, *, seed: int = 0) -> None:
        super().__init__()
        cfg = config or ScoreNetConfig()
        self.config = cfg
        self.sde = sde
        c0, c1, c2, c3 = cfg.channels
        e = cfg.embed_dim

        def make() -> nn.ModuleDict:
            return nn.ModuleDict(
                dict(
                    embed=nn.ModuleList(
                        [GaussianFourierProjection(e, cfg.fourier_scale), nn.Linear(e, e)]
                    ),
                    conv1=nn.Conv2d(1, c0, 3, stride=1, bias=False),
                    dense1=nn.Linear(e, c0),
                    gnorm1=nn.GroupNorm(_groups(4, 32, c0), c0),
                    conv2=nn.Conv2d(c0, c1, 3, stride=2, bias=False),
                    dense2=nn.Linear(e, c1),
                    gnorm2=nn.GroupNorm(_groups(32, 64, c1), c1),
                    conv3=nn.Conv2d(c1, c2, 3, stride=2, bias=False),
                    dense3=nn.Linear(e, c2),
                    gnorm3=nn.GroupNorm(_groups(32, 128, c2), c2),
                    conv4=nn.Conv2d(c2, c3, 3, stride=2, bias=False),
                    dense4=nn.Linear(e, c3),
                    gnorm4=nn.GroupNorm(_groups(32, 256, c3), c3),
                    tconv4=nn.ConvTranspose2d(c3, c2, 3, stride=2, bias=False),
                    dense5=nn.Linear(e, c2),
                    tgnorm4=nn.GroupNorm(_groups(32, 128, c2), c2),
                    tconv3=nn.ConvTranspose2d(
                        2 * c2, c1, 3, stride=2, bias=False, output_padding=1
                    ),
                    dense6=nn.Linear(e, c1),
                    tgnorm3=nn.GroupNorm(_groups(32, 64, c1), c1),
                    tconv2=nn.ConvTranspose2d(
                        2 * c1, c0, 3, stride=2, bias=False, output_padding=1
                    ),
                    dense7=nn.Linear(e, c0),
                    tgnorm2=nn.GroupNorm(_groups(32, 32, c0), c0),
                    tconv1=nn.ConvTranspose2d(2 * c0, 1, 3, stride=1),
                )
            )

        self.net = build_on_meta(make, seed)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"ScoreNet expects x of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        n = self.net
        act = nn.functional.silu
        emb = act(n.embed[1](n.embed[0](t)))

        def dense(layer: nn.Module) -> Tensor:
            return layer(emb)[:, :, None, None]

        h1 = act(n.gnorm1(n.conv1(x) + dense(n.dense1)))
        h2 = act(n.gnorm2(n.conv2(h1) + dense(n.dense2)))
        h3 = act(n.gnorm3(n.conv3(h2) + dense(n.dense3)))
        h4 = act(n.gnorm4(n.conv4(h3) + dense(n.dense4)))
        h = act(n.tgnorm4(n.tconv4(h4) + dense(n.dense5)))
        h = act(n.tgnorm3(n.tconv3(torch.cat([h, h3], dim=1)) + dense(n.dense6)))
        h = act(n.tgnorm2(n.tconv2(torch.cat([h, h2], dim=1)) + dense(n.dense7)))
        h = n.tconv1(torch.cat([h, h1], dim=1))
        std = self.sde.marginal_std(t).to(h.dtype)
        return h / std[:, None, None, None]
