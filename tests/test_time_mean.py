"""The time mean of a curve over t ~ U[t_min, T] (issue 16): log-t trapezoid weights, their order
of convergence, and the grid dependence of the uniform 10-point trapezoid it replaces."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorefpe.metrics.conservativity import time_average, uniform_time_mean, uniform_time_weights
from scorefpe.residuals import Curve, Spacing, log_t_grid, time_grid

T_MIN, T = 1e-3, 1.0


def _curve(t: torch.Tensor, f) -> Curve:
    return Curve("f", t, f(t), torch.zeros_like(t))


def _peaked(t: torch.Tensor) -> torch.Tensor:
    # Shaped like the trained models' curl MSE: 16 at t_min, falling by 6 orders to T.
    return 16.0 * (T_MIN / t) ** 2


PEAKED_EXACT = 16.0 * T_MIN**2 * (1 / T_MIN - 1 / T) / (T - T_MIN)


def _smooth(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(-t / 0.05) + 0.1 * torch.sin(3 * t)


SMOOTH_EXACT = (0.05 * (math.exp(-T_MIN / 0.05) - math.exp(-T / 0.05))
                + 0.1 / 3 * (math.cos(3 * T_MIN) - math.cos(3 * T))) / (T - T_MIN)


def test_log_grid_ends_and_spacing():
    g = log_t_grid(T_MIN, T, 7)
    assert g[0].item() == T_MIN and g[-1].item() == T
    r = g[1:] / g[:-1]
    torch.testing.assert_close(r, torch.full_like(r, 1000 ** (1 / 6)), rtol=1e-12, atol=0)
    with pytest.raises(ValueError):
        log_t_grid(0.0, 1.0, 5)


@settings(deadline=None, max_examples=40)
@given(st.lists(st.floats(1e-4, 10.0), min_size=0, max_size=12, unique=True),
       st.floats(-5.0, 5.0))
def test_weights_exact_for_c_over_t_on_any_grid(inner, c):
    # m(t) = c / t is constant in u = log t times dt/du = t: the log-t trapezoid is exact on
    # every grid, up to float64 round-off of the sums.
    t0, t1 = 1e-4, 10.0
    t = torch.tensor(sorted({t0, t1, *inner}), dtype=torch.float64)
    val = uniform_time_mean(_curve(t, lambda s: c / s)).value
    exact = c * math.log(t1 / t0) / (t1 - t0)
    assert val == pytest.approx(exact, rel=1e-12, abs=1e-15)


def test_weights_sum_to_one_up_to_quadrature_error():
    # sum w_i = trapezoid of e^u in u / (T - t_min): error ~ du^2 / 12 relative.
    for n in (10, 80):
        w = uniform_time_weights(log_t_grid(T_MIN, T, n))
        du = math.log(T / T_MIN) / (n - 1)
        assert abs(float(w.sum()) - 1) < du**2 / 12 * 1.1


@pytest.mark.parametrize("f, exact", [(_peaked, PEAKED_EXACT), (_smooth, SMOOTH_EXACT)])
def test_log_trapezoid_converges_at_second_order(f, exact):
    errs = {n: abs(uniform_time_mean(_curve(log_t_grid(T_MIN, T, n), f)).value - exact)
            for n in (10, 20, 40, 80, 160)}
    for a, b in ((20, 40), (40, 80), (80, 160)):
        order = math.log(errs[a] / errs[b]) / math.log((b - 1) / (a - 1))
        assert 1.9 < order < 2.1, (a, b, order)
    assert errs[80] / exact < 5e-3


def test_standard_error_is_propagated_with_the_weights():
    t = log_t_grid(T_MIN, T, 9)
    se = torch.linspace(0.1, 1.0, 9, dtype=torch.float64)
    w = uniform_time_weights(t)
    tm = uniform_time_mean(Curve("f", t, torch.zeros_like(t), se))
    assert tm.se == pytest.approx(float((w**2 * se**2).sum().sqrt()), rel=1e-12)
    assert tm.n_t == 9


def test_uniform_trapezoid_depends_on_the_grid_and_the_fix_does_not():
    # Regression test of the fix (issue 16): on a curve concentrated at t_min, the old 10-point
    # uniform trapezoid is set by the t_min node (weight h/2 = 0.055 on 16) and halves when the
    # grid doubles; the log-t mean agrees across 10..80 nodes within its O(du^2) error.
    old = {n: time_average(_curve(time_grid(T_MIN, T, n, Spacing.UNIFORM), _peaked)) for n in (10, 20, 40)}
    assert old[10] > 40 * PEAKED_EXACT
    assert old[10] / old[20] == pytest.approx(19 / 9, rel=0.02)
    assert old[20] / old[40] == pytest.approx(39 / 19, rel=0.02)
    new = {n: uniform_time_mean(_curve(log_t_grid(T_MIN, T, n), _peaked)).value
           for n in (10, 20, 40, 80)}
    for n, v in new.items():
        du = math.log(T / T_MIN) / (n - 1)
        # trapezoid error of a convex exponential in u: relative du^2 / 12 to leading order
        assert abs(v / PEAKED_EXACT - 1) < du**2 / 12 * 1.2, n
