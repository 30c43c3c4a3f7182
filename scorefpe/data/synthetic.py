"""Named low-dimensional data sets of FP-Diffusion (App. D.1) with samplers and exact scores.

| name         | q_0                                                              | exact score |
|--------------|------------------------------------------------------------------|-------------|
| gmm1d        | 3/10 N(-6/7, (1/70)^2) + 3/10 N(-2/7, (1/70)^2) + 4/10 N(4/7, (1/7)^2) | yes |
| gmm2d        | 1/5 N((-5,-5), I) + 4/5 N((5,5), I)                              | yes         |
| gmm8         | 8 equal modes on the unit circle (Listing 3), std 0.1            | yes         |
| checkerboard | uniform on 8 squares of side 2 in [-4, 4]^2 (Listing 1)          | yes (erf)   |
| swissroll    | five Swiss rolls (Listing 2), no closed-form density             | no          |

The checkerboard's perturbed density is a mixture of boxes convolved with N(0, v I): each box
[l, u] (scaled by a(t)) gives prod_i [Phi((x_i - a l_i)/sigma) - Phi((x_i - a u_i)/sigma)] / (a^D |box|),
computed in log space with log_ndtr, so its score is closed-form too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from scorefpe.data.mixtures import GaussianMixture, ScoreFn
from scorefpe.sde import SDE

Tensor = torch.Tensor


def _log_diff_ndtr(b: Tensor, c: Tensor) -> Tensor:
    """log(Phi(b) - Phi(c)) for b > c, accurate in both tails (uses Phi(b)-Phi(c) = Phi(-c)-Phi(-b))."""
    flip = c > 0
    hi = torch.where(flip, -c, b)
    lo = torch.where(flip, -b, c)
    lhi = torch.special.log_ndtr(hi)
    llo = torch.special.log_ndtr(lo)
    return lhi + torch.log1p(-torch.exp(llo - lhi))


class BoxMixture:
    """A mixture of uniform distributions on axis-aligned boxes, with exact perturbed score.

    Args:
        weights: (K,), normalised here. lower, upper: (K, D) box corners, lower < upper.
    """

    def __init__(self, weights: Tensor, lower: Tensor, upper: Tensor) -> None:
        lower = torch.as_tensor(lower, dtype=torch.float64)
        upper = torch.as_tensor(upper, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if lower.shape != upper.shape or lower.dim() != 2 or weights.shape != lower.shape[:1]:
            raise ValueError("BoxMixture needs weights (K,), lower and upper (K, D)")
        if bool((upper <= lower).any()) or bool((weights <= 0).any()):
            raise ValueError("BoxMixture needs upper > lower and positive weights")
        self.weights = weights / weights.sum()
        self.lower, self.upper = lower, upper
        self.dim = lower.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of q_0 (a box by weight, then uniform in it), float64, shape (n, D)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        lo, hi = self.lower[comp], self.upper[comp]
        return lo + u * (hi - lo)

    def _terms(self, x: Tensor, t: Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
        """log pi_k + log p_k(x) (B, K) and grad_x log p_k(x) (B, K, D)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        a = sde.mean_coeff(t)[:, None, None]
        sig = sde.marginal_std(t)[:, None, None]
        lo, hi = self.lower.to(x)[None], self.upper.to(x)[None]
        xx = x[:, None, :]
        b = (xx - a * lo) / sig  # > c
        c = (xx - a * hi) / sig
        logdiff = _log_diff_ndtr(b, c)  # (B, K, D)
        vol = (self.upper - self.lower).to(x).log().sum(-1)  # (K,)
        logp = logdiff.sum(-1) - self.dim * a[..., 0].log() - vol[None]
        log_phi = lambda z: -0.5 * z**2 - 0.5 * math.log(2 * math.pi)  # noqa: E731
        grad = (torch.exp(log_phi(b) - logdiff) - torch.exp(log_phi(c) - logdiff)) / sig
        return self.weights.to(x).log()[None] + logp, grad

    def log_prob(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """log q_t(x) of the perturbed mixture, q_t = sum_k pi_k (U(box_k) pushed through
        x(t) = a(t) x0 + sigma(t) z): per axis a difference of normal CDFs. x (B, D), t (B,)
        -> (B,). Cost O(B K D), no model calls.

        Raises:
            ValueError: x not of shape (B, D).
        """
        logits, _ = self._terms(x, t, sde)
        return torch.logsumexp(logits, -1)

    def score(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """s(x, t) = grad_x log q_t(x) = sum_k r_k(x) grad_x log p_k(x) (r_k the responsibilities),
        exact. x (B, D), t (B,) -> (B, D). Cost O(B K D).

        Raises:
            ValueError: x not of shape (B, D).
        """
        logits, grad = self._terms(x, t, sde)
        return (torch.softmax(logits, -1)[..., None] * grad).sum(1)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """`score` under ``sde`` as a ``score_fn(x, t)`` callable for the operators."""
        return lambda x, t: self.score(x, t, sde)

    def log_prob_fn(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """`log_prob` under ``sde`` as a ``log_prob_fn(x, t)`` callable (x (B, D) -> (B,))."""
        return lambda x, t: self.log_prob(x, t, sde)


def _swissroll_sample(n: int, generator: torch.Generator | None = None) -> Tensor:
    """FP-Diffusion Listing 2: five copies of sklearn's make_swiss_roll(noise=1.0)[:, [0, 2]] / 4."""
    per = [n // 5 + (1 if i < n % 5 else 0) for i in range(5)]
    r = 4.5
    shifts = [(0.0, 0.0), (-r, -r), (-r, r), (r, -r), (r, r)]
    out = []
    for m, (sx, sy) in zip(per, shifts):
        tt = 1.5 * math.pi * (1 + 2 * torch.rand(m, generator=generator, dtype=torch.float64))
        pts = torch.stack([tt * torch.cos(tt), tt * torch.sin(tt)], 1)
        pts = pts + torch.randn(m, 2, generator=generator, dtype=torch.float64)
        out.append(pts / 4 + torch.tensor([sx, sy], dtype=torch.float64))
    return torch.cat(out)


@dataclass(frozen=True)
class SyntheticDataset:
    """A named low-dimensional data set: a sampler and, where it exists, the exact model.

    ``truth`` is a GaussianMixture or BoxMixture giving ``score(x, t, sde)`` and
    ``log_prob(x, t, sde)`` of the perturbed density, or None (no closed form).
    """

    name: str
    dim: int
    truth: GaussianMixture | BoxMixture | None
    sampler: Callable[[int, torch.Generator | None], Tensor]
    description: str

    @property
    def has_score(self) -> bool:
        """True when the data set has a closed-form perturbed score and density."""
        return self.truth is not None

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of q_0, float64, shape (n, dim)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        return self.sampler(n, generator)

    def _need_truth(self) -> GaussianMixture | BoxMixture:
        if self.truth is None:
            raise ValueError(f"data set {self.name!r} has no closed-form density or score")
        return self.truth

    def score(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """Exact score grad_x log q_t(x) of the perturbed data, x (B, dim), t (B,) -> (B, dim).

        Raises:
            ValueError: no closed form for this data set, or x of the wrong shape.
        """
        return self._need_truth().score(x, t, sde)

    def log_prob(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """Exact log q_t(x) of the perturbed data, x (B, dim), t (B,) -> (B,).

        Raises:
            ValueError: no closed form for this data set, or x of the wrong shape.
        """
        return self._need_truth().log_prob(x, t, sde)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """`score` under ``sde`` as a ``score_fn(x, t)`` callable for the operators.

        Raises:
            ValueError: no closed form for this data set (raised here, not at the first call).
        """
        return self._need_truth().score_fn(sde)

    def log_prob_fn(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """`log_prob` under ``sde`` as a ``log_prob_fn(x, t)`` callable (x (B, dim) -> (B,)).

        Raises:
            ValueError: no closed form for this data set (raised here, not at the first call).
        """
        return self._need_truth().log_prob_fn(sde)


def _gmm(weights, means, covs) -> GaussianMixture:
    return GaussianMixture(
        torch.tensor(weights, dtype=torch.float64),
        torch.tensor(means, dtype=torch.float64),
        torch.tensor(covs, dtype=torch.float64),
    )


def _make_gmm1d() -> SyntheticDataset:
    g = _gmm(
        [0.3, 0.3, 0.4],
        [[-6 / 7], [-2 / 7], [4 / 7]],
        [[[(1 / 70) ** 2]], [[(1 / 70) ** 2]], [[(1 / 7) ** 2]]],
    )
    return SyntheticDataset("gmm1d", 1, g, g.sample, "1-D three-mode GMM (FP-Diffusion D.1)")


def _make_gmm2d() -> SyntheticDataset:
    eye = [[1.0, 0.0], [0.0, 1.0]]
    g = _gmm([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [eye, eye])
    return SyntheticDataset("gmm2d", 2, g, g.sample, "1/5 N((-5,-5), I) + 4/5 N((5,5), I)")


def _make_gmm8() -> SyntheticDataset:
    th = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = torch.stack([torch.sin(th), torch.cos(th)], 1)
    covs = (0.1**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2).clone()
    g = GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, covs)
    return SyntheticDataset("gmm8", 2, g, g.sample, "8 modes on the unit circle, std 0.1")


def _make_checkerboard() -> SyntheticDataset:
    lows = []
    for i, x0 in enumerate(range(-2, 2)):
        rows = (0, -2) if x0 % 2 == 0 else (1, -1)
        for y0 in rows:
            lows.append([2.0 * x0, 2.0 * y0])
    lower = torch.tensor(lows, dtype=torch.float64)
    box = BoxMixture(torch.ones(8, dtype=torch.float64), lower, lower + 2.0)
    return SyntheticDataset(
        "checkerboard", 2, box, box.sample, "uniform on 8 squares of side 2 in [-4, 4]^2"
    )


def _make_swissroll() -> SyntheticDataset:
    return SyntheticDataset("swissroll", 2, None, _swissroll_sample, "five Swiss rolls (Listing 2)")


DATASETS: dict[str, Callable[[], SyntheticDataset]] = {
    "gmm1d": _make_gmm1d,
    "gmm2d": _make_gmm2d,
    "gmm8": _make_gmm8,
    "checkerboard": _make_checkerboard,
    "swissroll": _make_swissroll,
}


def get_dataset(name: str) -> SyntheticDataset:
    """The named synthetic data set; raises ValueError listing the valid names."""
    try:
        return DATASETS[name]()
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}") from None
