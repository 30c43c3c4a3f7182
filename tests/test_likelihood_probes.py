"""The likelihood's Hutchinson probes are drawn once per solve, not at every ODE evaluation.

A probe redrawn at every right-hand-side evaluation makes the ODE's right-hand side random: the
adaptive solver then shrinks its step until the noise fits the tolerance and runs for many
minutes instead of failing. These tests therefore (a) count the score evaluations and stop the
solve with an error after a cap, and (b) carry a pytest-timeout limit as a second guard.

The field is linear, s(x, t) = A x, so along any path div_x s = tr A and the Hutchinson value
v^T A v is a constant per point for fixed probes; for the VP SDE (div f = -D beta / 2)

    delta = int_{t_min}^T (div f - 1/2 g^2 div s) dt = -(D + h) / 2 * B,   B = int_{t_min}^T beta dt,

with h = tr A (exact divergence) or h = 1/K sum_k v_k^T A v_k (fixed probes), so the probe value
each point used can be read back from delta. The right-hand side of delta depends on t only:
its integral is exact up to the solver's tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from scorefpe.sampling.likelihood import probability_flow_likelihood
from scorefpe.sde import VPSDE

DT = torch.float64
T_MIN = 1e-3
SDE = VPSDE()
# A_sym = -2 I plus a rotation: tr A = -4, and v^T A v = -2 |v|^2 is -2 chi^2_2 (var 16) per probe.
A = torch.tensor([[-2.0, 0.8], [-0.8, -2.0]], dtype=DT)
N = 256
TOL = 1e-7


class _Counted:
    """s(x, t) = A x that counts its calls and fails the test after ``cap`` of them."""

    def __init__(self, a: torch.Tensor, cap: int):
        self.a, self.cap, self.calls = a, cap, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.cap:
            raise RuntimeError(
                f"more than {self.cap} score evaluations: the solver is not converging, as it "
                "does when the Hutchinson probes are redrawn at every evaluation"
            )
        return x @ self.a.T


def _beta_integral() -> float:
    b0, b1 = SDE.beta_min, SDE.beta_max
    return b0 * (1 - T_MIN) + (b1 - b0) * (1 - T_MIN**2) / 2


def _points() -> torch.Tensor:
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(7), dtype=DT)


def _solve(a: torch.Tensor, cap: int, **kw):
    fn = _Counted(a, cap)
    res = probability_flow_likelihood(fn, SDE, _points(), t_min=T_MIN, rtol=TOL, atol=TOL, **kw)
    return res, fn.calls


@pytest.mark.timeout(60)
def test_fixed_probes_keep_the_solve_short_and_the_probe_value_constant():
    exact, calls_exact = _solve(A, 10_000)
    # The exact solve reproduces the closed form: delta = -(D + tr A) / 2 * B.
    bint = _beta_integral()
    assert torch.allclose(exact.delta, torch.full((N,), -(2 + float(A.trace())) / 2 * bint, dtype=DT),
                          rtol=0, atol=100 * TOL * bint)
    # With fixed probes the right-hand side is as smooth as the exact one: the solver needs about
    # as many evaluations (one score call per evaluation either way). Allow twice as many.
    cap = 2 * calls_exact + 12
    # Gaussian probes: with A_sym = -2 I a Rademacher probe gives v^T A v = tr A exactly (no spread
    # to read back); the default Rademacher probes are tested in test_likelihood.py.
    hutch, calls = _solve(A, cap, divergence="hutchinson", n_probes=1, probe="gaussian",
                          generator=torch.Generator().manual_seed(11))
    assert calls <= cap and hutch.nfe <= cap
    # The path does not depend on the probes: x(T) agrees within the two solves' error bounds,
    # n_steps (atol + rtol |y|) each with n_steps = nfe / 6 (RK45).
    size = 1 + float(exact.x_T.abs().max())
    bound = (exact.nfe + hutch.nfe) / 6 * TOL * size
    assert float((hutch.x_T - exact.x_T).abs().max()) < bound
    # Each point's probe value h = v^T A v = v^T A_sym v, read back from delta: one fixed
    # Gaussian probe gives mean tr A and variance 2 ||A_sym||_F^2 over points. (A probe redrawn
    # at every evaluation would average the probes of many evaluations: a far smaller variance.)
    h = -2 * hutch.delta / bint - 2
    a_sym = (A + A.T) / 2
    var = 2 * float(a_sym.pow(2).sum())
    assert abs(float(h.mean()) - float(A.trace())) < 4.5 * math.sqrt(var / N)
    # Sample variance of N values of -2 chi^2_2 (kurtosis 9): relative sd sqrt(8 / N) = 0.18,
    # so [0.25, 4] is > 4 sd wide on each side.
    assert 0.25 < float(h.var()) / var < 4.0, (float(h.var()), var)


@pytest.mark.timeout(60)
def test_same_generator_same_probes():
    # Reproducible for a given generator seed, and a second solve with 2 A reads back twice the
    # probe value point by point: the same probes are drawn for the whole solve.
    kw = dict(divergence="hutchinson", n_probes=2, probe="gaussian")  # spread: see above
    a, _ = _solve(A, 2_000, generator=torch.Generator().manual_seed(13), **kw)
    b, _ = _solve(A, 2_000, generator=torch.Generator().manual_seed(13), **kw)
    c, _ = _solve(2 * A, 2_000, generator=torch.Generator().manual_seed(13), **kw)
    assert torch.equal(a.log_prob, b.log_prob)
    bint = _beta_integral()
    h_a = -2 * a.delta / bint - 2
    h_c = -2 * c.delta / bint - 2
    assert torch.allclose(h_c, 2 * h_a, rtol=0, atol=1e-4)
    assert float(h_a.std()) > 1.0  # values differ between points (sd 2.8 expected): not vacuous
