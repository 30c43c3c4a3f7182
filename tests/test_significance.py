"""Paired comparisons over seeds (`scorefpe.experiments.significance`): p-values on constructed
cases whose answers are known in closed form, independent of scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorefpe.experiments.significance import paired_comparison, signflip_pvalue


def test_paired_t_closed_form_df2():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 sqrt(3). For 2 degrees of freedom the t CDF is
    # F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p is 1 - t / sqrt(2 + t^2).
    base = np.array([10.0, 20.0, 30.0])
    res = paired_comparison(base + [1.0, 2.0, 3.0], base)
    t = 2.0 * math.sqrt(3.0)
    assert res.t_stat == pytest.approx(t, rel=1e-12)
    assert res.p_ttest == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t), rel=1e-9)  # 0.074180
    assert res.mean_diff == pytest.approx(2.0) and res.sd_diff == pytest.approx(1.0)
    assert not res.significant(0.05) and res.significant(0.10)
    # Only the all-plus and all-minus patterns reach |mean| = 2: p = 2/8.
    assert res.p_signflip == pytest.approx(0.25) and res.p_signflip_min == pytest.approx(0.25)


def test_paired_t_closed_form_df1():
    # n = 2: T_1 is Cauchy, p = 1 - (2/pi) atan(|t|). d = (1, 3): mean 2, sd sqrt(2), t = 2.
    res = paired_comparison([1.0, 3.0], [0.0, 0.0])
    assert res.p_ttest == pytest.approx(1.0 - 2.0 / math.pi * math.atan(2.0), rel=1e-9)


def test_pairing_matters():
    # A constant shift of 0.5 (exact in binary) on baselines that vary by 100 between seeds: unpaired tests would
    # see nothing, the paired test sees zero spread in d (t = inf, p = 0).
    base = np.array([100.0, 200.0, 300.0, 400.0])
    res = paired_comparison(base + 0.5, base)
    assert res.t_stat == math.inf and res.p_ttest == 0.0
    assert res.p_signflip == pytest.approx(2 / 16)


def test_signflip_counts_patterns():
    # d = (1, -1, 2): |mean| = 2/3; patterns (+-1, +-1, +-2) with |sum| >= 2: those with the 2's
    # sign matching the sum, sum in {4, 2, 2, -2, -2, -4}: 6 of 8.
    assert signflip_pvalue(np.array([1.0, -1.0, 2.0])) == pytest.approx(6 / 8)


def test_no_difference():
    res = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(res.p_ttest) and res.p_signflip == 1.0 and not res.significant()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=3, max_size=8),
       st.floats(-10, 10, allow_nan=False))
def test_t_matches_scipy_and_is_shift_equivariant(d, c):
    d = np.asarray(d)
    if np.std(d) < 1e-6 * (1 + np.abs(d).max()):
        return
    res = paired_comparison(d, np.zeros_like(d))
    from scipy import stats
    ref = stats.ttest_rel(d, np.zeros_like(d))
    assert res.p_ttest == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-15)
    assert 0.0 <= res.p_signflip <= 1.0 and res.p_signflip >= res.p_signflip_min - 1e-15
    assert res.ci_low <= res.mean_diff + 1e-9 and res.mean_diff - 1e-9 <= res.ci_high
    # adding the same constant to both arms changes nothing
    shifted = paired_comparison(d + c, np.zeros_like(d) + c)
    assert shifted.p_ttest == pytest.approx(res.p_ttest, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("a,b,msg", [
    ([1.0, 2.0], [1.0], "equal length"),
    ([1.0], [1.0], "at least 2"),
    ([1.0, math.nan], [1.0, 2.0], "finite"),
    ([0.0] * 21, [0.0] * 21, "2^n"),
])
def test_bad_input(a, b, msg):
    with pytest.raises(ValueError, match=msg.replace("^", r"\^")):
        paired_comparison(a, b)
