"""Forward SDEs dx = f(x, t) dt + g(t) dw on t in [0, T] (Song et al. 2021; FP-Diffusion Table 3).

An SDE supplies only what the score FPE needs: the drift f, the diffusion g, the divergence
div_x f, and the Gaussian transition kernel q_0t(x(t) | x(0)) = N(a(t) x(0), v(t) I) of the
linear SDEs used here. Everything else (the residual, the likelihood, the samplers) is written
once, generically, on top of these methods.

Shapes: x is (B, D) or (B, C, H, W) (any (B, ...)); t is (B,) with the same dtype and device.
Per-sample quantities of t (g, a, std, ...) are returned with shape (B,); use `bcast(v, x)` to
broadcast them against x. Every method works in the dtype of its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from scorefpe._util import parse_choice

Tensor = torch.Tensor


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor v of shape (B,) to (B, 1, ..., 1) so it broadcasts with x."""
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def _flat_dim(x: Tensor) -> int:
    return int(math.prod(x.shape[1:]))


class SDE:
    """Base class of the linear SDEs: f(x, t) = -1/2 beta(t) x or 0, and a scalar g(t).

    Subclasses define `drift_coeff(t)` (f = drift_coeff(t) * x), `diffusion(t)`,
    `mean_coeff(t)` = a(t) and `marginal_var(t)` = v(t).
    """

    T: float = 1.0

    # --- what a subclass provides -------------------------------------------------------
    def drift_coeff(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def diffusion(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """g(t), shape (B,)."""
        raise NotImplementedError

    def mean_coeff(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """a(t) in x(t) | x(0) ~ N(a(t) x(0), v(t) I), shape (B,)."""
        raise NotImplementedError

    def marginal_var(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """v(t) in x(t) | x(0) ~ N(a(t) x(0), v(t) I), shape (B,)."""
        raise NotImplementedError

    def prior_std(self) -> float:  # pragma: no cover - abstract
        """Standard deviation of the prior N(0, prior_std^2 I) at t = T."""
        raise NotImplementedError

    # --- derived, generic ---------------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t), shaped like x."""
        return bcast(self.drift_coeff(t), x) * x

    def div_drift(self, x: Tensor, t: Tensor) -> Tensor:
        """div_x f(x, t) = D * drift_coeff(t), shape (B,) (D = number of entries per sample)."""
        return self.drift_coeff(t) * _flat_dim(x)

    def marginal_std(self, t: Tensor) -> Tensor:
        """sqrt(v(t)), shape (B,)."""
        return self.marginal_var(t).sqrt()

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean a(t) x0 (shaped like x0) and std sqrt(v(t)) (shape (B,)) of x(t) | x(0) = x0."""
        return bcast(self.mean_coeff(t), x0) * x0, self.marginal_std(t)

    def perturb(
        self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw x(t) = a(t) x0 + sqrt(v(t)) z with z ~ N(0, I). Returns (x(t), z)."""
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        mean, std = self.marginal(x0, t)
        return mean + bcast(std, x0) * z, z

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Samples of the prior N(0, prior_std^2 I) with the given shape (B, ...)."""
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return self.prior_std() * z

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I) summed over all but the batch axis, shape (B,)."""
        d = _flat_dim(x)
        s2 = self.prior_std() ** 2
        sq = x.reshape(x.shape[0], -1).pow(2).sum(-1)
        return -0.5 * sq / s2 - 0.5 * d * math.log(2 * math.pi * s2)


class VEVariance(str, Enum):
    """Marginal variance convention of the VE SDE (both are exact solutions of its FPE).

    EXACT: v(t) = sigma(t)^2 - sigma_min^2 (x(0) is the data itself; the default here).
    SONG:  v(t) = sigma(t)^2 (Song et al.'s code and Lu et al.'s toy code, used by FP-Diffusion
           App. D.1): the same SDE started from the data convolved with N(0, sigma_min^2 I).
    """

    EXACT = "exact"
    SONG = "song"


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE: f = 0, g(t)^2 = d sigma(t)^2 / dt, sigma(t) = smin (smax/smin)^t.

    g(t)^2 = sigma(t)^2 * 2 log(sigma_max / sigma_min); div_x f = 0; a(t) = 1.
    variance (`VEVariance`): the marginal variance is the exact v(t) = sigma(t)^2 - sigma_min^2
    (default, so that x(0) = x0), or Song et al.'s v(t) = sigma(t)^2: that is the same SDE started
    from data already blurred by N(0, sigma_min^2 I). Both solve the FPE, since dv/dt = g^2 either
    way; the data sets' closed forms follow through `marginal_var`. At t_min = 1e-3 the two
    differ a lot: std 1.3e-3 (exact) against 1.0e-2 (Song).
    Prior: N(0, sigma_max^2 I).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    variance: VEVariance = VEVariance.EXACT

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max) or not math.isfinite(self.sigma_max):
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )
        object.__setattr__(self, "variance",
                           parse_choice(VEVariance, self.variance, "VE variance convention"))

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t, shape (B,)."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coeff(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def mean_coeff(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def marginal_var(self, t: Tensor) -> Tensor:
        if self.variance is VEVariance.SONG:
            return self.sigma(t) ** 2
        return self.sigma(t) ** 2 - self.sigma_min**2

    def prior_std(self) -> float:
        return self.sigma_max


@dataclass(frozen=True)
class VPSDE(SDE):
    """Variance-preserving SDE: f = -1/2 beta(t) x, g(t)^2 = beta(t), beta linear in t.

    beta(t) = beta_min + t (beta_max - beta_min); div_x f = -D/2 beta(t);
    a(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min); v(t) = 1 - a(t)^2
    (computed as -expm1(2 log a) so that it keeps its relative accuracy at small t).
    Prior: N(0, I).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.beta_min < self.beta_max) or not math.isfinite(self.beta_max):
            raise ValueError(
                f"VPSDE needs 0 <= beta_min < beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_mean_coeff(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coeff(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()

    def mean_coeff(self, t: Tensor) -> Tensor:
        return self._log_mean_coeff(t).exp()

    def marginal_var(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self._log_mean_coeff(t))

    def prior_std(self) -> float:
        return 1.0


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """sub-VP SDE (Song et al. 2021): f = -1/2 beta(t) x, g^2 = beta(t) (1 - exp(-2 int_0^t beta)).

    Same a(t) as VP; v(t) = (1 - a(t)^2)^2. Prior: N(0, I).
    """

    def diffusion(self, t: Tensor) -> Tensor:
        return (self.beta(t) * -torch.expm1(4 * self._log_mean_coeff(t))).sqrt()

    def marginal_var(self, t: Tensor) -> Tensor:
        return torch.expm1(2 * self._log_mean_coeff(t)) ** 2


SDES: dict[str, type[SDE]] = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def make_sde(name: str, **params: float | str) -> SDE:
    """Build an SDE by name ('ve', 'vp', 'subvp') with optional parameters (VE: variance=
    'exact' or 'song', see `VEVariance`)."""
    try:
        cls = SDES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(SDES)}") from None
    return cls(**params)
