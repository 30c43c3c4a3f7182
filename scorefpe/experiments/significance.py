"""Paired comparisons over seeds: is a penalty's effect on a metric distinguishable from zero?

Two runs that share a seed share their initialisation, data order and sampler noise, so the
honest unit of comparison is the per-seed difference d_i = metric(penalty, seed i) -
metric(baseline, seed i). On d_1..d_n this module computes

- the paired t-test (Student, n - 1 degrees of freedom): t = mean(d) / (sd(d) / sqrt(n)), two-sided
  p = 2 P(T_{n-1} > |t|); it assumes the d_i are normal, which nobody can check at n = 3;
- the exact sign-flip (permutation) test: under H0 (no effect) each d_i is symmetric about 0, so
  all 2^n sign patterns of |d_i| are equally likely; p = fraction of patterns whose |mean| is at
  least the observed one. Distribution-free, but its smallest attainable p is 2 / 2^n (0.25 at
  n = 3, 0.0625 at n = 5, 0.0078 at n = 8): with few seeds it cannot reject at 5 %;
- a percentile bootstrap interval of mean(d) (resampling seeds), a description of the spread,
  not a test (at n = 3 it has only 10 distinct resamples).

Cost: O(2^n) for the sign-flip test (n <= 20 enforced), O(n_boot n) for the bootstrap.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

MAX_EXACT_N = 20


@dataclass(frozen=True)
class PairedComparison:
    """Result of :func:`paired_comparison` (differences are treatment - baseline)."""

    n: int
    mean_diff: float
    sd_diff: float
    t_stat: float
    p_ttest: float
    p_signflip: float
    p_signflip_min: float
    ci_low: float
    ci_high: float
    ci_level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def significant(self, alpha: float = 0.05) -> bool:
        """True when the paired t-test rejects H0 at level alpha (the test the tables report)."""
        return math.isfinite(self.p_ttest) and self.p_ttest < alpha


def _check_pairs(treatment: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    a = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"treatment and baseline must be 1-D of equal length (paired by seed), "
                         f"got shapes {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"a paired comparison needs at least 2 seeds, got {a.size}")
    if a.size > MAX_EXACT_N:
        raise ValueError(f"the exact sign-flip test enumerates 2^n patterns; n = {a.size} > "
                         f"{MAX_EXACT_N}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("treatment and baseline must be finite")
    return a - b


def signflip_pvalue(d: np.ndarray) -> float:
    """Exact two-sided sign-flip p-value of mean(d) = 0: share of the 2^n sign patterns s with
    |mean(s * |d|)| >= |mean(d)| (ties counted, with a relative tolerance of 1e-12)."""
    absd = np.abs(d)
    obs = abs(d.mean())
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=d.size)))
    means = np.abs(signs @ absd) / d.size
    return float(np.mean(means >= obs * (1 - 1e-12)))


def paired_comparison(treatment: Sequence[float], baseline: Sequence[float], *,
                      n_boot: int = 10_000, ci_level: float = 0.95,
                      seed: int = 0) -> PairedComparison:
    """Paired t-test, exact sign-flip test and bootstrap interval of mean(treatment - baseline).

    Args:
        treatment, baseline: one value per seed, in the same seed order (length n >= 2).
        n_boot: bootstrap resamples of the seeds.
        ci_level: coverage of the percentile interval.
        seed: seed of the bootstrap resampling.

    Returns:
        A :class:`PairedComparison`. With sd(d) = 0 the t statistic is +-inf (p = 0) when
        mean(d) != 0 and nan (p = nan) when every difference is 0.

    Raises:
        ValueError: unequal or too short/long inputs, non-finite values, a level outside (0, 1).
    """
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must lie in (0, 1), got {ci_level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    d = _check_pairs(treatment, baseline)
    n = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd > 0:
        t = mean / (sd / math.sqrt(n))
        p_t = float(2.0 * stats.t.sf(abs(t), df=n - 1))
    else:
        t = math.copysign(math.inf, mean) if mean != 0 else math.nan
        p_t = 0.0 if mean != 0 else math.nan
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - ci_level) / 2, (1 + ci_level) / 2])
    return PairedComparison(n=n, mean_diff=mean, sd_diff=sd, t_stat=float(t), p_ttest=p_t,
                            p_signflip=signflip_pvalue(d), p_signflip_min=2.0 / 2**n,
                            ci_low=float(lo), ci_high=float(hi), ci_level=ci_level)
