"""Convergence order of every finite-difference stencil for d_t s, measured, not assumed.

A field affine or quadratic in t makes any consistent stencil (a first-order one included)
exact or hides its leading error, so these tests use s(x, t) = sin(x) exp(C t): every
t-derivative is C^k s, none vanishes. For a stencil with nodes (o_j, w_j) Taylor expansion gives

    est - d_t s = sum_j w_j o_j^3 / 3! d_t^3 s + sum_j w_j o_j^4 / 4! d_t^4 s + ...

    central (s(t+h) - s(t-h)) / 2h          : + h^2 / 6 s'''          (next: h^4 / 120 s^(5))
    nonuniform (h_s, h_d), FP-Diffusion C.1 : + h_s h_d / 6 s'''      (next: h_s h_d (h_d - h_s) / 24 s'''')
    forward  (-3 s(t) + 4 s(t+h) - s(t+2h)) / 2h : - h^2 / 3 s'''     (next: - h^3 / 4 s'''')
    backward ( 3 s(t) - 4 s(t-h) + s(t-2h)) / 2h : - h^2 / 3 s'''     (next: + h^3 / 4 s'''')

With C = 1.5 and h <= 0.1 the next term is at most 3 h C / 4 = 11 % of the leading one (forward,
backward), so over h = 0.1 ... 0.1 / 32 the fitted log-log slope is the order to within 0.05 and
the error at the smallest h is the leading term to within 0.4 %. Round-off (~1e-16 |s| / h
~ 1e-13) is far below the smallest truncation error (~1e-6). The tests assert a slope in
[order - 0.2, order + 0.2] and the leading coefficient to 2 %: a first-order stencil (slope 1)
or a second-order one with a wrong weight fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorefpe import fp_residual, time_derivative
from scorefpe.operators import STENCILS, apply_stencil
from scorefpe.sde import VPSDE

DT = torch.float64
C = 1.5
H = [0.1 / 2**k for k in range(6)]
SLOPE_TOL = 0.2
COEF_RTOL = 0.02


def _field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * torch.exp(C * t)[:, None]


def _d3t(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return C**3 * _field(x, t)


def _points(t: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    # sin(x) stays away from 0 at these x, so every entry has a sizeable error to measure.
    x = torch.tensor([[0.7, -1.2], [2.0, 0.4], [-0.9, 1.4]], dtype=DT)
    x = x.repeat(len(t), 1)
    tt = torch.tensor(t, dtype=DT).repeat_interleave(3)
    return x, tt


def _slope(hs: list[float], errs: list[float]) -> float:
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


def _check_convergence(errors: dict[float, torch.Tensor], leading: dict[float, torch.Tensor], order: int):
    """errors[h], leading[h]: signed error and predicted leading term, same shape."""
    hs = sorted(errors)
    sizes = [float(errors[h].abs().max()) for h in hs]
    slope = _slope(hs, sizes)
    assert abs(slope - order) <= SLOPE_TOL, (slope, sizes)
    h0 = hs[0]
    assert torch.allclose(errors[h0], leading[h0], rtol=COEF_RTOL, atol=0.0), (
        errors[h0], leading[h0]
    )


# Stencil factory arguments for step h, and the leading error coefficient K (error K h^2 s''').
# The nonuniform stencil runs with h_s = h, h_d = h / 2 (the package's default ratio 1e-3 : 5e-4).
CASES = {
    "central": ((lambda h: (h,)), 1 / 6),
    "nonuniform": ((lambda h: (h, h / 2)), 1 / 12),
    "forward": ((lambda h: (h,)), -1 / 3),
    "backward": ((lambda h: (h,)), -1 / 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_stencil_converges_at_its_declared_order(name):
    args, k = CASES[name]
    x, t = _points([0.5])
    exact = C * _field(x, t)
    errors, leading = {}, {}
    for h in H:
        st = STENCILS[name](*args(h))
        errors[h] = apply_stencil(_field, x, t, st) - exact
        leading[h] = k * h**2 * _d3t(x, t)
    assert STENCILS[name](*args(H[0])).order == 2
    _check_convergence(errors, leading, 2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reusing_s_at_t_gives_the_same_stencil_value(name):
    # fp_residual passes s(x, t) for the offset-0 node: the value must not change.
    args, _ = CASES[name]
    x, t = _points([0.5])
    st = STENCILS[name](*args(0.05))
    a = apply_stencil(_field, x, t, st)
    b = apply_stencil(_field, x, t, st, s_at_t=_field(x, t))
    assert torch.allclose(a, b, rtol=1e-13, atol=0.0)


T_MIN, T_MAX = 0.1, 1.0
# Where time_derivative must use which stencil: forward at t_min, the interior one in the
# middle, backward at T (h <= 0.1 keeps the interior stencil inside at 0.55).
WHERE = {"t_min": (T_MIN, "forward"), "interior": (0.55, None), "T": (T_MAX, "backward")}


@pytest.mark.parametrize("method", ["central", "nonuniform"])
@pytest.mark.parametrize("where", sorted(WHERE))
def test_time_derivative_converges_at_order_two_at_both_ends_and_inside(method, where):
    t0, one_sided = WHERE[where]
    name = one_sided or method
    _, k = CASES[name]
    x, t = _points([t0])
    exact = C * _field(x, t)
    errors, leading = {}, {}
    for h in H:
        est = time_derivative(_field, x, t, method=method, h=h, h_s=h, h_d=h / 2,
                              t_min=T_MIN, t_max=T_MAX)
        errors[h] = est - exact
        leading[h] = k * h**2 * _d3t(x, t)
    _check_convergence(errors, leading, 2)


@pytest.mark.parametrize("method", ["central", "nonuniform"])
def test_residual_stencil_error_converges_at_order_two(method):
    # fp_residual with time_method set replaces only d_t s: with the exact divergence the
    # difference to the exact residual is the stencil's error, through the s_at_t path.
    sde = VPSDE()
    score = lambda x, t: _field(x, t) - x  # noqa: E731  (any smooth field: not a score)
    x, t = _points([T_MIN, 0.55, T_MAX])
    exact = fp_residual(score, sde, x, t, t_min=T_MIN)
    coef = torch.tensor([CASES["forward"][1], CASES[method][1], CASES["backward"][1]],
                        dtype=DT).repeat_interleave(3)[:, None]
    errors, leading = {}, {}
    for h in H:
        est = fp_residual(score, sde, x, t, time_method=method, h=h, h_s=h, h_d=h / 2, t_min=T_MIN)
        errors[h] = est - exact
        leading[h] = coef * h**2 * _d3t(x, t)
    _check_convergence(errors, leading, 2)


def test_first_order_stencil_fails_the_slope_check():
    # The check is not vacuous: the first-order forward difference (s(t+h) - s(t)) / h has
    # slope 1 on this field.
    x, t = _points([0.5])
    exact = C * _field(x, t)
    sizes = [float(((_field(x, t + h) - _field(x, t)) / h - exact).abs().max()) for h in H]
    assert abs(_slope(H, sizes) - 1.0) < SLOPE_TOL
    assert abs(_slope(H, sizes) - 2.0) > 4 * SLOPE_TOL
