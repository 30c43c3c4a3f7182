"""The score model the Cauchy solver trains: the MLP of scorefpe.models wrapped in a
preconditioning that makes its inputs and outputs O(1) at every t.

    c(t)^2 = a(t)^2 sigma_data^2 + v(t)        (the variance of q_t if q_0 were N(mu, sigma_data^2 I))
    s~(x, t) = [ net(x / c(t), t) - x / c(t) ] / c(t)

- Input scaling x / c(t): for VE, x(1) has std ~ sigma_max = 50; the MLP sees O(1) inputs.
- Output scaling 1 / c(t): the score has magnitude ~ 1 / std of q_t.
- Skip term -x / c^2: the score of N(0, c^2 I), exactly the large-t limit of any q_t with second
  moment sigma_data^2 per coordinate, so an untrained net starts near the t = T solution and the
  solver has to learn only the data-dependent correction. Both the PINN and the DSM baseline use
  this same wrapper (same network, same parametrisation).
"""

from __future__ import annotations

import torch
from torch import nn

from scorefpe.models.mlp import MLPConfig, MLPScoreNet
from scorefpe.sde import SDE

Tensor = torch.Tensor


def data_scale(x0: Tensor) -> float:
    """sigma_data = sqrt(E |x0|^2 / D) from samples x0 (n, D): second moment about 0, so that
    N(0, sigma_data^2 I) has the data's mean square."""
    if x0.dim() != 2 or x0.shape[0] < 2:
        raise ValueError(f"x0 must have shape (n >= 2, D), got {tuple(x0.shape)}")
    return float(x0.double().pow(2).mean().sqrt())


class PreconditionedScore(nn.Module):
    """s~(x, t) = [net(x / c(t), t) - x / c(t)] / c(t), c(t)^2 = a(t)^2 sigma_data^2 + v(t).

    Args:
        config: the MLP's sizes (``MLPConfig``; its dim is the data dimension D).
        sde: the forward SDE giving a(t), v(t).
        sigma_data: data scale (> 0), see `data_scale`.
        seed: parameter seed (global RNG untouched).

    forward(x (B, D), t (B,)) -> (B, D). Smooth in x and t (c(t) > 0 for t >= 0), so the FP
    residual's derivatives d_t s~, div_x s~, grad_x L exist. Cost: one MLP pass.
    """

    def __init__(self, config: MLPConfig, sde: SDE, sigma_data: float, *, seed: int = 0) -> None:
        super().__init__()
        if not (sigma_data > 0):
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.net = MLPScoreNet(config, sde=None, seed=seed)
        self.sde = sde
        self.sigma_data = float(sigma_data)

    def scale(self, t: Tensor) -> Tensor:
        """c(t), shape (B,)."""
        a = self.sde.mean_coeff(t)
        return (a * a * self.sigma_data**2 + self.sde.marginal_var(t)).sqrt()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.scale(t).to(x.dtype)[:, None]
        xin = x / c
        return (self.net(xin, t) - xin) / c
