"""Probability-flow likelihood and curl MSE against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from problems import linear_field
from scorefpe.data.mixtures import GaussianMixture
from scorefpe.metrics.conservativity import (
    curl_mse_curve,
    curl_sq,
    time_average,
)
from scorefpe.sampling.likelihood import log_likelihood, probability_flow_likelihood
from scorefpe.residuals import Curve, Spacing, time_grid
from scorefpe.sde import VESDE, VPSDE

DT = torch.float64
T_MIN = 1e-3


def _gaussian() -> GaussianMixture:
    # A correlated 2-D Gaussian data distribution: its perturbed density and score are exact.
    return GaussianMixture(
        torch.tensor([1.0], dtype=DT),
        torch.tensor([[0.5, -1.0]], dtype=DT),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]]], dtype=DT),
    )


def _exact_prior(g: GaussianMixture, sde):
    return lambda y: g.log_prob(y, torch.ones(y.shape[0], dtype=DT), sde)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_gaussian_log_likelihood_is_exact_within_ode_tolerance(sde):
    # With the exact score and p_T = q_T the ODE reproduces log q_{t_min} exactly up to the
    # solver's error. RK45 keeps each accepted step's local error below atol + rtol |y|, and
    # for a Gaussian div f~ does not depend on x, so the log-density part accumulates at most
    # the sum of the local errors: n_steps (atol + rtol |y|) with n_steps = nfe / 6 (six
    # right-hand-side evaluations per step, FSAL) and |y| <= max(|log p|, |delta|, |log p_T|).
    # Observed: 1-4 % of this bound (e.g. VE, tol 1e-5: error 5.4e-5, bound 2.8e-3); a
    # likelihood off by 1e-2 (a wrong sign or factor in a term) fails.
    g = _gaussian()
    x = g.sample(32, torch.Generator().manual_seed(1))
    exact = g.log_prob(x, torch.full((32,), T_MIN, dtype=DT), sde)
    errs = {}
    for tol in (1e-5, 1e-8):
        res = probability_flow_likelihood(
            g.score_fn(sde), sde, x, t_min=T_MIN, rtol=tol, atol=tol, prior_log_prob=_exact_prior(g, sde)
        )
        errs[tol] = float((res.log_prob - exact).abs().max())
        size = max(float(v.abs().max()) for v in (res.log_prob, res.delta, res.prior_log_prob))
        bound = res.nfe / 6 * tol * (1 + size)
        assert errs[tol] < bound, (tol, errs[tol], bound)
        assert res.nfe > 0
        assert torch.allclose(res.log_prob, res.prior_log_prob + res.delta)
    # Tightening the tolerance must tighten the answer (the solver, not luck, sets the error).
    assert errs[1e-8] < errs[1e-5]


def test_default_prior_error_is_the_prior_mismatch():
    # With the N(0, I) prior instead of q_T the error is log q_T(x_T) - log N(x_T; 0, I), which
    # the result's own parts let us compute: the integral is the same.
    sde = VPSDE()
    g = _gaussian()
    x = g.sample(16, torch.Generator().manual_seed(2))
    kw = dict(t_min=T_MIN, rtol=1e-8, atol=1e-8)
    a = probability_flow_likelihood(g.score_fn(sde), sde, x, **kw)
    b = probability_flow_likelihood(g.score_fn(sde), sde, x, prior_log_prob=_exact_prior(g, sde), **kw)
    assert torch.allclose(a.delta, b.delta, atol=1e-9)
    mismatch = _exact_prior(g, sde)(a.x_T) - sde.prior_log_prob(a.x_T)
    assert torch.allclose(b.log_prob - a.log_prob, mismatch, atol=1e-6)
    assert float(mismatch.abs().max()) > 1e-4  # the check above is not vacuous


def test_log_likelihood_wrapper_matches():
    sde = VPSDE()
    g = _gaussian()
    x = g.sample(8, torch.Generator().manual_seed(3))
    a = log_likelihood(g.score_fn(sde), sde, x, t_min=T_MIN, rtol=1e-6, atol=1e-6, method="RK45",
                       n_probes=None, generator=None)
    b = probability_flow_likelihood(g.score_fn(sde), sde, x, t_min=T_MIN, rtol=1e-6, atol=1e-6)
    assert a.shape == (8,) and torch.equal(a, b.log_prob)


def test_hutchinson_likelihood_is_unbiased():
    # Fixed-probe Hutchinson: each point's estimate is unbiased for its exact log-density. z-test
    # of the mean error over independent points (4 standard errors); a missing factor 1/2 in the
    # divergence term shifts the mean by tens of nats and fails it.
    sde = VPSDE()
    g = _gaussian()
    n = 96
    x = g.sample(n, torch.Generator().manual_seed(4))
    kw = dict(t_min=T_MIN, rtol=1e-5, atol=1e-5, prior_log_prob=_exact_prior(g, sde))
    exact = probability_flow_likelihood(g.score_fn(sde), sde, x, **kw).log_prob
    est = probability_flow_likelihood(
        g.score_fn(sde), sde, x, divergence="hutchinson", n_probes=2,
        generator=torch.Generator().manual_seed(5), **kw
    ).log_prob
    d = est - exact
    se = float(d.std()) / math.sqrt(n)
    assert float(d.std()) > 1e-3  # it is a stochastic estimate
    assert abs(float(d.mean())) < 4 * se, (float(d.mean()), se)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t_min=0.0), "t_min"),
        (dict(t_min=1.5), "t_min"),
        (dict(rtol=0.0), "rtol"),
        (dict(atol=float("nan")), "atol"),
        (dict(method="Euler"), "Euler"),
        (dict(divergence="trace"), "trace"),
        (dict(n_probes=0), "n_probes"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    sde = VPSDE()
    g = _gaussian()
    x = g.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        probability_flow_likelihood(g.score_fn(sde), sde, x, **kwargs)


def test_bad_points_raise():
    sde = VPSDE()
    fn = _gaussian().score_fn(sde)
    with pytest.raises(ValueError, match="shape"):
        probability_flow_likelihood(fn, sde, torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match="NaN"):
        probability_flow_likelihood(fn, sde, torch.full((2, 2), float("nan"), dtype=DT))


def test_batched_solve_agrees():
    sde = VPSDE()
    g = _gaussian()
    x = g.sample(10, torch.Generator().manual_seed(6))
    kw = dict(t_min=T_MIN, rtol=1e-8, atol=1e-8)
    a = probability_flow_likelihood(g.score_fn(sde), sde, x, **kw)
    b = probability_flow_likelihood(g.score_fn(sde), sde, x, batch_size=3, **kw)
    assert torch.allclose(a.log_prob, b.log_prob, atol=1e-5)


# --- curl -----------------------------------------------------------------------------------


def test_curl_of_rotation_field_is_exact():
    # s = A x with A = [[0, c], [-c, 0]]: curl = d1 s2 - d2 s1 = -2c, curl^2 = 4 c^2 everywhere.
    c = 0.7
    a = torch.tensor([[0.3, c], [-c, -0.2]], dtype=DT)
    fn = linear_field(a, torch.zeros(2, dtype=DT))
    x = torch.randn(5, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    out = curl_sq(fn, x, torch.full((5,), 0.5, dtype=DT))
    assert torch.allclose(out, torch.full((5,), 4 * c**2, dtype=DT), rtol=1e-12)


def test_curl_of_true_score_is_round_off_and_of_rotation_is_not():
    sde = VPSDE()
    g = _gaussian()
    grid = time_grid(T_MIN, 1.0, 4, Spacing.UNIFORM)
    true = curl_mse_curve(g.score_fn(sde), sde, g.sample, grid, n_points=32,
                          generator=torch.Generator().manual_seed(0))
    assert float(true.mean.max()) < 1e-20
    a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=DT)
    rot = curl_mse_curve(linear_field(a, torch.zeros(2, dtype=DT)), sde, g.sample, grid, n_points=8,
                         generator=torch.Generator().manual_seed(1))
    assert torch.allclose(rot.mean, torch.full((4,), 4.0, dtype=DT))


def test_time_average_is_trapezoid_exact_on_linear():
    t = time_grid(0.1, 1.0, 7, Spacing.UNIFORM)
    c = Curve("x", t, 3 * t + 1, torch.zeros_like(t))
    assert time_average(c) == pytest.approx(3 * 0.55 + 1, rel=1e-12)
    with pytest.raises(ValueError):
        time_grid(0.0, 1.0, 5, Spacing.UNIFORM)
    with pytest.raises(ValueError, match="n_points"):
        curl_mse_curve(lambda x, t: x, VPSDE(), _gaussian().sample, t, n_points=1)


# Hutchinson probes of the likelihood: both kinds unbiased, variances as stated. For the linear
# score s = A x the path x(t) does not depend on the probes and div s = tr A at every t, so with
# M = c A, c = int_{t_min}^T 1/2 g^2 dt, each point's error is exactly c (tr A - v^T A v):
# variance 2 c^2 ||A_sym||_F^2 / K (Gaussian), 2 c^2 (||A_sym||_F^2 - sum A_ii^2) / K (Rademacher).
A_LIN = torch.tensor([[1.5, 0.3, 0.0, -0.2],
                      [0.1, -1.0, 0.3, 0.0],
                      [0.0, 0.3, 0.5, 0.2],
                      [-0.2, 0.0, 0.4, -1.5]], dtype=DT)


def _c_vp(sde, t_min):
    # int_{t_min}^T 1/2 beta(t) dt for beta(t) = beta_min + t (beta_max - beta_min)
    T = sde.T
    return 0.5 * (sde.beta_min * (T - t_min) + 0.5 * (sde.beta_max - sde.beta_min) * (T**2 - t_min**2))


def _probe_errors(a, probe, n, k, seed):
    sde = VPSDE()
    x = torch.randn(n, a.shape[0], generator=torch.Generator().manual_seed(seed), dtype=DT)
    kw = dict(t_min=T_MIN, rtol=1e-8, atol=1e-8)
    fn = linear_field(a, torch.zeros(a.shape[0], dtype=DT))
    exact = probability_flow_likelihood(fn, sde, x, **kw).log_prob
    est = probability_flow_likelihood(fn, sde, x, divergence="hutchinson", n_probes=k, probe=probe,
                                      generator=torch.Generator().manual_seed(seed + 1), **kw)
    return est.log_prob - exact, _c_vp(sde, T_MIN)


def test_likelihood_probe_variances_and_unbiasedness():
    n, k = 400, 2
    sym = 0.5 * (A_LIN + A_LIN.T)
    fro2, diag2 = float(sym.pow(2).sum()), float(torch.diagonal(A_LIN).pow(2).sum())
    var_hat = {}
    for probe, fro_part in (("gaussian", fro2), ("rademacher", fro2 - diag2)):
        e, c = _probe_errors(A_LIN, probe, n, k, seed=0)
        var = 2 * c**2 * fro_part / k
        m2 = float(e.var())
        m4 = float(((e - e.mean()) ** 4).mean())
        se_var = math.sqrt(max(m4 - m2**2, 0.0) / n)  # SE of the sample variance
        assert abs(m2 - var) < 4 * se_var, (probe, m2, var, se_var)
        assert abs(float(e.mean())) < 4 * math.sqrt(var / n), (probe, float(e.mean()))  # unbiased
        var_hat[probe] = m2
    # stated ratio (||A_sym||^2 - sum A_ii^2) / ||A_sym||^2 = 0.52 / 6.27 = 0.083 here
    assert var_hat["rademacher"] < 0.5 * var_hat["gaussian"]


def test_likelihood_rademacher_is_exact_for_a_diagonal_jacobian():
    a = torch.diag(torch.tensor([1.5, -1.0, 0.5, -1.5], dtype=DT))
    e_r, _ = _probe_errors(a, "rademacher", 32, 1, seed=3)
    e_g, c = _probe_errors(a, "gaussian", 32, 1, seed=3)
    assert float(e_r.abs().max()) < 1e-9  # v^T A v = tr A for every +-1 vector
    assert float(e_g.std()) > 0.1 * c  # Gaussian: sd 2^(1/2) c ||A||_F ~ 3 c


def test_likelihood_default_probe_is_rademacher():
    a = torch.diag(torch.tensor([1.0, -2.0], dtype=DT))
    sde = VPSDE()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    fn = linear_field(a, torch.zeros(2, dtype=DT))
    exact = log_likelihood(fn, sde, x, rtol=1e-8, atol=1e-8)
    est = log_likelihood(fn, sde, x, rtol=1e-8, atol=1e-8, n_probes=1)
    assert float((est - exact).abs().max()) < 1e-9  # exact only with Rademacher probes
    with pytest.raises(ValueError, match="'uniform'.*'gaussian', 'rademacher'"):
        log_likelihood(fn, sde, x, n_probes=1, probe="uniform")
