"""The score model the Cauchy solver trains: the MLP of scorefpe.models wrapped in a
preconditioning that makes its inputs, outputs and time dependence O(1) at every t, for any data.

    c(t)^2 = a(t)^2 sigma_data^2 + v(t)        (the variance of q_t if q_0 were N(0, sigma_data^2 I))
    b(t)^2 = a(t)^2 sigma_local^2 + v(t),  sigma_local^2 = (1 / J_0 - v(t_min)) / a(t_min)^2,
             J_0 = E_{q_{t_min}} |s(x, t_min)|^2 / D   (so b(t_min) = J_0^{-1/2})
    tau(t) = log(rho(t) / rho(t_min)) / log(rho(T) / rho(t_min)),  rho(t)^2 = b(t)^2 / a(t)^2
    s~(x, t) = -x / c(t)^2 + net(x / b(t), tau(t)) / b(t)

- Output scale 1 / b(t): the RMS size of the score. 1 / b(t_min) is the RMS of the initial score
  per coordinate, and by Stam's inequality (1/J(X + Y) >= 1/J(X) + 1/J(Y) for independent X, Y,
  applied to x(t) = (a(t)/a(t_min)) x(t_min) + N(0, v(t) - (a(t)/a(t_min))^2 v(t_min))) the RMS
  score of q_t is at most 1 / b(t); by Cramer-Rao it is at least 1 / c(t); b / c -> 1 as v grows.
- Input scale x / b(t): b is the length on which the score varies (the mode width at small t, the
  noise std at large t). Near a mode k, s = (a mu_k - x) / b^2, so net = (a mu_k - x) / b: slope
  -1 in the net's input, whatever the data. With x / c, the slope is -c / b (gmm8: -7, gmm1d: -33
  at t_min), a function the MLP did not learn in thousands of steps (spectral bias).
- Time tau(t) in [0, 1]: the log of the score's length scale in data units. The score changes
  only where b(t) / a(t) does (d_t s ~ g^2 / b^3), so the net's own t-dependence is spent there;
  with raw t, an untrained net varies on the scale of its time embedding everywhere, which the
  (natural-)weighted residual punishes where the true score is still (gmm2d: t < 0.3).
- Skip term -x / c^2: the score of N(0, c^2 I), exactly the large-t limit of any q_t with second
  moment sigma_data^2 per coordinate, so the net learns only the data-dependent correction.
The first version (``sigma_local=None``) was s~ = -x / c^2 + net(x / c, t) / c; with it neither
the PINN nor DSM learnt gmm8's or gmm1d's initial condition (docs/results/cauchy.md).
Both the PINN and the DSM baseline use this same wrapper (same network, same parametrisation).
"""

from __future__ import annotations

import math

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


def local_scale(score0: Tensor, sde: SDE, t_min: float) -> float:
    """sigma_local = sqrt(1 / J_0 - v(t_min)) / a(t_min), J_0 = mean |score0|^2 / D: the data
    scale at t = 0 that makes b(t_min)^2 = 1 / J_0 in `PreconditionedScore` (b(t)^2 =
    a(t)^2 sigma_local^2 + v(t)).

    score0: the initial score s(x, t_min) at samples x ~ q_{t_min}, shape (n, D). Monte Carlo:
    relative standard error of J_0 about sqrt(Var |s|^2 / n) / E|s|^2. By Stam's inequality
    1 / J_0 >= v(t_min) for the exact J_0; an estimate below it (few samples) is clamped to
    1e-3 / J_0 above v(t_min), keeping sigma_local > 0.

    Raises:
        ValueError: score0 not of shape (n >= 2, D), non-finite, or identically zero.
    """
    if score0.dim() != 2 or score0.shape[0] < 2:
        raise ValueError(f"score0 must have shape (n >= 2, D), got {tuple(score0.shape)}")
    j0 = float(score0.double().pow(2).mean())
    if not (math.isfinite(j0) and j0 > 0):
        raise ValueError(f"the initial score's mean square must be finite and > 0, got {j0!r}")
    t = torch.tensor([t_min], dtype=torch.float64)
    v0 = float(sde.marginal_var(t))
    a0 = float(sde.mean_coeff(t))
    return math.sqrt(max(1.0 / j0 - v0, 1e-3 / j0)) / a0


class PreconditionedScore(nn.Module):
    """s~(x, t) = -x / c(t)^2 + net(x / b(t), tau(t)) / b(t) (module docstring), with
    c(t)^2 = a(t)^2 sigma_data^2 + v(t), b(t)^2 = a(t)^2 sigma_local^2 + v(t) and the network's time
    tau(t) = log(rho(t) / rho(t_min)) / log(rho(T) / rho(t_min)) in [0, 1], rho(t)^2 = b(t)^2 / a(t)^2.

    Args:
        config: the MLP's sizes (``MLPConfig``; its dim is the data dimension D).
        sde: the forward SDE giving a(t), v(t) and T.
        sigma_data: data scale (> 0), see `data_scale`.
        sigma_local: initial-score scale (> 0), see `local_scale`. None: the first version,
            s~ = -x / c^2 + net(x / c, t) / c (output scale 1 / c, raw time), kept to reproduce
            its runs.
        t_min: start time of the Cauchy problem (where tau = 0); used only with sigma_local.
        seed: parameter seed (global RNG untouched).

    forward(x (B, D), t (B,)) -> (B, D). Smooth in x and t (b, c > 0 for t >= 0), so the FP
    residual's derivatives d_t s~, div_x s~, grad_x L exist. Cost: one MLP pass.

    Raises:
        ValueError: sigma_data or sigma_local not > 0, t_min not in (0, T), or rho(T) <= rho(t_min).
    """

    def __init__(self, config: MLPConfig, sde: SDE, sigma_data: float, *, sigma_local: float | None = None,
                 t_min: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        if not (sigma_data > 0):
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        if sigma_local is not None and not (sigma_local > 0):
            raise ValueError(f"sigma_local must be > 0 or None, got {sigma_local!r}")
        if not (0 < t_min < sde.T):
            raise ValueError(f"t_min must lie in (0, T = {sde.T}), got {t_min!r}")
        self.net = MLPScoreNet(config, sde=None, seed=seed)
        self.sde = sde
        self.sigma_data = float(sigma_data)
        self.local = sigma_local is not None
        self.sigma_local = float(sigma_local) if self.local else self.sigma_data
        self.t_min = float(t_min)
        ends = torch.tensor([self.t_min, float(sde.T)], dtype=torch.float64)
        log_rho = self._log_rho(ends)
        if self.local and not bool(log_rho[1] > log_rho[0]):
            raise ValueError(f"rho(t) = b(t) / a(t) must grow over [t_min, T]; got {log_rho.tolist()}")
        self._log_rho0, self._log_rho_span = float(log_rho[0]), float(log_rho[1] - log_rho[0])

    def _scale(self, t: Tensor, sigma: float) -> Tensor:
        a = self.sde.mean_coeff(t)
        return (a * a * sigma**2 + self.sde.marginal_var(t)).sqrt()

    def _log_rho(self, t: Tensor) -> Tensor:
        a = self.sde.mean_coeff(t)
        return 0.5 * (self.sigma_local**2 + self.sde.marginal_var(t) / (a * a)).log()

    def scale(self, t: Tensor) -> Tensor:
        """c(t), shape (B,): the variance scale of the skip term -x / c^2."""
        return self._scale(t, self.sigma_data)

    def out_scale(self, t: Tensor) -> Tensor:
        """b(t), shape (B,): 1 / b is the RMS score size (the output scale), b the input scale."""
        return self._scale(t, self.sigma_local)

    def net_time(self, t: Tensor) -> Tensor:
        """tau(t), shape (B,): the network's time input (t itself for the first version)."""
        if not self.local:
            return t
        return (self._log_rho(t) - self._log_rho0) / self._log_rho_span

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        c = self.scale(t).to(x.dtype)[:, None]
        b = self.out_scale(t).to(x.dtype)[:, None]
        xin = x / b if self.local else x / c
        return self.net(xin, self.net_time(t).to(x.dtype)) / b - x / (c * c)
