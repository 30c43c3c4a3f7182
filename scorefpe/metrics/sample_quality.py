"""Sample-quality metrics on feature sets: Frechet distance, Density and Coverage, class entropy.

- `frechet_distance(f1, f2)`: the Frechet (2-Wasserstein) distance between the Gaussians fitted
  to two feature sets, in float64 (Heusel et al. 2017; "FID" on LeNet features: `fid_lenet`).
- `density_coverage(real, fake, k=5)`: Density and Coverage of Naeem et al. (2020), computed in
  row chunks so that no full N x M distance matrix is held.
- `class_entropy(probs)`: Shannon entropy of the class distribution a classifier predicts over
  a set of samples (nats by default; at most log C, log 10 = 2.3026 nats = 3.3219 bits).

All functions take torch tensors (any float dtype; computed in float64 on the CPU or the input's
device) and return Python floats or small frozen dataclasses.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum

import torch

from scorefpe._util import parse_choice
from scorefpe.metrics.lenet import LeNet, lenet_features, lenet_probs


Tensor = torch.Tensor

__all__ = [
    "ClassDistribution",
    "DensityCoverage",
    "EntropyUnit",
    "GaussianStats",
    "RealDataFloor",
    "class_distribution",
    "class_entropy",
    "density_coverage",
    "fid_lenet",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "real_data_floor",
    "shannon_entropy",
    "sqrtm_psd",
    "trace_sqrt_product",
]


def _as_features(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return x


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and unbiased covariance (D, D) of a feature set of n rows, float64."""

    mean: Tensor
    cov: Tensor
    n: int


def gaussian_stats(features: Tensor) -> GaussianStats:
    """Mean and unbiased sample covariance (divisor n - 1) of features (N, D), in float64.

    Cost O(N D^2). Raises ValueError for N < 2, a wrong shape or non-finite values.
    """
    x = _as_features(features, "features")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (n - 1)
    return GaussianStats(mean, 0.5 * (cov + cov.T), n)


def sqrtm_psd(s: Tensor) -> Tensor:
    """Symmetric PSD square root S^{1/2} = U diag(sqrt(max(lambda, 0))) U^T, float64.

    Uses the symmetric eigendecomposition of (S + S^T)/2; eigenvalues that round-off made
    slightly negative are set to 0, so rank-deficient S is fine (scipy.linalg.sqrtm returns
    complex values there). Cost O(D^3).
    """
    s = s.to(torch.float64)
    lam, u = torch.linalg.eigh(0.5 * (s + s.T))
    return (u * lam.clamp_min(0).sqrt()) @ u.T


def trace_sqrt_product(s1: Tensor, s2: Tensor) -> float:
    """tr sqrt(S1^{1/2} S2 S1^{1/2}) for symmetric PSD S1, S2 (D, D), in float64.

    Computed as the nuclear norm (sum of singular values) of S1^{1/2} S2^{1/2}: since
    (S1^{1/2} S2^{1/2})(S1^{1/2} S2^{1/2})^T = S1^{1/2} S2 S1^{1/2}, its singular values are the
    square roots of that matrix's eigenvalues. The singular values carry an absolute error of
    about eps ||S1||^(1/2) ||S2||^(1/2), while taking square roots of the eigenvalues of
    S1^{1/2} S2 S1^{1/2} turns an absolute error eps ||.|| in a near-zero eigenvalue into
    sqrt(eps ||.||) (so identical rank-deficient sets would give ~1e-8 ||S|| instead of ~1e-15).
    Cost O(D^3).
    """
    r1, r2 = sqrtm_psd(s1), sqrtm_psd(s2)
    return float(torch.linalg.svdvals(r1 @ r2).sum())


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """d^2 = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr sqrt(S_a^{1/2} S_b S_a^{1/2}), float64.

    This is the squared 2-Wasserstein distance between N(mu_a, S_a) and N(mu_b, S_b) (what FID
    reports, without a square root). The result is clamped at 0 (round-off can make it
    -1e-15 ||S||). Round-off: about D eps (tr S_a + tr S_b) for well-scaled inputs.

    Raises:
        ValueError: feature dimensions differ.
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(
            f"feature dimensions differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}"
        )
    mu_a, mu_b = a.mean.to(torch.float64), b.mean.to(torch.float64)
    s_a, s_b = a.cov.to(torch.float64), b.cov.to(torch.float64)
    diff = float(((mu_a - mu_b) ** 2).sum())
    d = diff + float(torch.trace(s_a) + torch.trace(s_b)) - 2.0 * trace_sqrt_product(s_a, s_b)
    return max(d, 0.0)


def frechet_distance(features1: Tensor, features2: Tensor) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N1, D), (N2, D).

    Means and unbiased covariances in float64, then `frechet_distance_from_stats`. The estimate
    is biased upward by sampling noise: for two independent sets from N(mu, I_D) its expectation
    is about (D + D (D + 1) / 4) (1/N1 + 1/N2) (mean part plus covariance part) rather than 0,
    so only compare values computed with the same N1, N2.
    Cost O((N1 + N2) D^2 + D^3).

    Raises:
        ValueError: shapes, N < 2, different D, non-finite values.
    """
    return frechet_distance_from_stats(gaussian_stats(features1), gaussian_stats(features2))


# --------------------------------------------------------------------------------------------
# Density and coverage (Naeem et al. 2020)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DensityCoverage:
    """Density (>= 0, about 1 when fake matches real; can exceed 1) and Coverage (in [0, 1])."""

    density: float
    coverage: float
    k: int
    n_real: int
    n_fake: int


def _sq_dists(a: Tensor, b: Tensor, a2: Tensor, b2: Tensor) -> Tensor:
    return (a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _chunk_rows(n_cols: int, max_elements: int) -> int:
    return max(1, max_elements // max(n_cols, 1))


def density_coverage(
    real: Tensor, fake: Tensor, k: int = 5, *, max_chunk_elements: int = 2**22
) -> DensityCoverage:
    """Density and Coverage (Naeem et al. 2020, eqs. 3 and 4) of fake features against real.

    With r_i the distance from real point R_i to its k-th nearest neighbour among the other
    real points (the (k+1)-th smallest distance, counting R_i itself, as in the authors'
    `prdc` code), and B(R_i, r_i) the open ball:

        density  = 1/(k M) sum_j sum_i 1[ |F_j - R_i| < r_i ]
        coverage = 1/N     sum_i 1[ min_j |F_j - R_i| < r_i ]

    for N real and M fake points. Density counts how many real neighbourhoods a fake point
    falls in (expected about 1 for identical distributions); coverage is the fraction of real
    points whose neighbourhood holds at least one fake point.

    Computed in float64 with squared distances |a|^2 + |b|^2 - 2 a.b after centring on the real
    mean (round-off ~1e-15 of the squared distances), in row chunks of at most
    `max_chunk_elements` entries (default 4M = 32 MiB of float64): memory O(max_chunk_elements +
    N + M), time O((N^2 + N M) D).

    Raises:
        ValueError: shapes, non-finite values, different D, k < 1 or N <= k.
    """
    r = _as_features(real, "real")
    f = _as_features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: real {r.shape[1]}, fake {f.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    n, m = r.shape[0], f.shape[0]
    if n <= k:
        raise ValueError(f"need more than k = {k} real points, got {n}")
    mce = max_chunk_elements
    if isinstance(mce, bool) or not isinstance(mce, int) or mce < 1:
        raise ValueError(f"max_chunk_elements must be a positive integer, got {max_chunk_elements!r}")

    center = r.mean(0)
    r = r - center
    f = f - center
    r2 = (r * r).sum(1)
    f2 = (f * f).sum(1)

    # Squared radii: (k+1)-th smallest squared distance in each real row (self included).
    radii2 = torch.empty(n, dtype=torch.float64, device=r.device)
    rows = _chunk_rows(n, max_chunk_elements)
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        d = _sq_dists(r[lo:hi], r, r2[lo:hi], r2)
        radii2[lo:hi] = d.topk(k + 1, dim=1, largest=False).values[:, -1]

    # Real-by-fake pass: count fake points inside each ball, and each ball's nearest fake point.
    inside = torch.zeros(m, dtype=torch.float64, device=r.device)
    covered = 0
    rows = _chunk_rows(m, max_chunk_elements)
    for lo in range(0, n, rows):
        hi = min(lo + rows, n)
        d = _sq_dists(r[lo:hi], f, r2[lo:hi], f2)
        within = d < radii2[lo:hi, None]
        inside += within.sum(0, dtype=torch.float64)
        covered += int(within.any(1).sum())
    density = float(inside.sum()) / (k * m)
    coverage = covered / n
    return DensityCoverage(density=density, coverage=coverage, k=k, n_real=n, n_fake=m)


# --------------------------------------------------------------------------------------------
# Entropy of the predicted class distribution
# --------------------------------------------------------------------------------------------
class EntropyUnit(Enum):
    """Logarithm base of an entropy: NATS (natural log, max log C) or BITS (log2, max log2 C)."""

    NATS = "nats"
    BITS = "bits"


class ClassDistribution(Enum):
    """How a classifier's outputs over N samples become one class distribution p (C,).

    HARD: p_c = fraction of samples whose most probable class (argmax) is c (the histogram of
      predicted labels; what "the class distribution given by the classifier over the
      generated images" reads as).
    SOFT: p_c = mean over samples of the predicted probability of class c.
    """

    HARD = "hard"
    SOFT = "soft"


def shannon_entropy(p: Tensor, unit: EntropyUnit | str = EntropyUnit.NATS) -> float:
    """H(p) = -sum_c p_c log p_c of a probability vector p (C,), with 0 log 0 = 0, in float64.

    unit: NATS (natural log) or BITS (log base 2). 0 <= H <= log C.

    Raises:
        ValueError: p not 1-D, negative or non-finite entries, or sum differing from 1 by more
            than 1e-6.
    """
    u = parse_choice(EntropyUnit, unit, "entropy unit")
    if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.numel() < 1:
        raise ValueError(f"p must be a non-empty 1-D tensor, got {getattr(p, 'shape', type(p))}")
    p = p.detach().to(torch.float64)
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("p must have finite, non-negative entries")
    total = float(p.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"p must sum to 1, sums to {total!r}")
    p = p / total
    h = float(-torch.special.xlogy(p, p).sum())
    return h / math.log(2.0) if u is EntropyUnit.BITS else h


def class_distribution(
    probs: Tensor, kind: ClassDistribution | str = ClassDistribution.HARD
) -> Tensor:
    """Class distribution (C,) float64 of predicted probabilities `probs` (N, C) (rows sum to 1).

    HARD: histogram of argmax labels / N; SOFT: mean of the rows. See `ClassDistribution`.

    Raises:
        ValueError: probs not (N, C) probabilities, unknown kind.
    """
    kind = parse_choice(ClassDistribution, kind, "class distribution")
    x = _as_features(probs, "probs")
    if (x < 0).any() or ((x.sum(1) - 1).abs() > 1e-4).any():
        raise ValueError("probs must hold probabilities: non-negative rows summing to 1 (softmax)")
    if kind is ClassDistribution.SOFT:
        return x.mean(0)
    labels = x.argmax(1)
    return torch.bincount(labels, minlength=x.shape[1]).to(torch.float64) / x.shape[0]


def class_entropy(
    probs: Tensor,
    *,
    kind: ClassDistribution | str = ClassDistribution.HARD,
    unit: EntropyUnit | str = EntropyUnit.NATS,
) -> float:
    """Shannon entropy of the class distribution a classifier predicts over N samples.

    probs: (N, C) predicted probabilities (e.g. `lenet_probs`). Returns H(class_distribution)
    in `unit` (nats by default: the 2026 paper's 2.26 against a maximum log 10 = 2.3026).
    Sampling error: for HARD, H is a plug-in estimate, biased low by about (C - 1)/(2N) nats.

    Raises:
        ValueError: as `class_distribution` and `shannon_entropy`.
    """
    return shannon_entropy(class_distribution(probs, kind), unit)


# --------------------------------------------------------------------------------------------
# FID on LeNet features
# --------------------------------------------------------------------------------------------
def fid_lenet(
    samples: Tensor,
    reference: Tensor | GaussianStats,
    lenet: LeNet,
    *,
    batch_size: int = 1000,
) -> float:
    """Frechet distance between LeNet features of `samples` and of `reference`.

    samples: images (N, 1, 28, 28) or (N, 28, 28) with values in [0, 1] (clamp generated
    samples first). reference: images of the same kind (e.g. the 10,000 MNIST test images), or
    their precomputed `gaussian_stats(lenet_features(...))`. Features: the 84-d penultimate
    activations of `lenet` (see scorefpe.metrics.lenet). Cost: one LeNet forward per image
    plus O(N D^2 + D^3) with D = 84.

    Raises:
        ValueError: images of the wrong shape or outside [0, 1], N < 2.
    """
    fs = gaussian_stats(lenet_features(lenet, samples, batch_size=batch_size))
    if isinstance(reference, GaussianStats):
        fr = reference
    else:
        fr = gaussian_stats(lenet_features(lenet, reference, batch_size=batch_size))
    return frechet_distance_from_stats(fs, fr)


@dataclass(frozen=True)
class RealDataFloor:
    """Sample metrics of real images against the test set: the best a model's samples can do
    with this many images (FID(LeNet), Density, Coverage with k neighbours, and the hard-label
    class entropy in nats of each set; max ln 10 = 2.3026)."""

    n_real: int
    n_test: int
    k: int
    fid: float
    density: float
    coverage: float
    entropy_real: float
    entropy_test: float
    seconds: float


def real_data_floor(model: LeNet, real_images: Tensor, test_images: Tensor, *,
                    k: int = 5) -> RealDataFloor:
    """The metrics `scorefpe eval` reports for samples, computed for real images instead.

    FID = `frechet_distance` of the LeNet features of ``real_images`` (N, 1, 28, 28) and
    ``test_images`` (M, 1, 28, 28); Density/Coverage (`density_coverage`) of the real images
    against the test set as reference, with ``k`` neighbours; `class_entropy` (hard labels, nats)
    of each set. Cost: LeNet forward passes of N + M images (twice: features and probabilities)
    and O(N M) feature distances. FID is biased upward by ~1/N + 1/M (see `frechet_distance`).

    Raises:
        ValueError: bad image shapes, too few images, k out of range (from the metrics).
    """
    t0 = time.perf_counter()
    f_test, f_real = lenet_features(model, test_images), lenet_features(model, real_images)
    fid = frechet_distance(f_real, f_test)
    dc = density_coverage(f_test, f_real, k=k)
    return RealDataFloor(
        n_real=int(real_images.shape[0]), n_test=int(test_images.shape[0]), k=k, fid=fid,
        density=dc.density, coverage=dc.coverage,
        entropy_real=class_entropy(lenet_probs(model, real_images)),
        entropy_test=class_entropy(lenet_probs(model, test_images)),
        seconds=time.perf_counter() - t0)
