"""Importance sampling of t (`penalties.draw_times`, PenaltyConfig.t_proposal): unbiased for any
function of t and for the penalties, and the weights stay bounded."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from problems import timevarying_linear
from scorefpe.penalties import PenaltyConfig, draw_times, penalized_dsm
from scorefpe.sde import VPSDE

F64 = torch.float64
Z = 5.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=20, deadline=None)
@given(log_tmin=st.floats(-6, -1), seed=st.integers(0, 10_000),
       prop=st.sampled_from(["log-mixture", "inverse-square-mixture"]))
def test_mixtures_are_unbiased_for_closed_form_means(log_tmin, seed, prop):
    # E_q[w f(t)] = E_p[f(t)] with p = U[t_min, 1]: f = 1/t (mean log(1/t_min) / (1 - t_min),
    # the heavy tail the proposal is for) and f = t^2 (mean (1 - t_min^3) / (3 (1 - t_min))).
    t_min, n = 10.0**log_tmin, 200_000
    g = _gen(seed)
    t, w = draw_times(torch.rand(n, generator=g, dtype=F64), torch.rand(n, generator=g, dtype=F64),
                      t_min, 1.0, prop)
    assert float(t.min()) >= t_min and float(t.max()) <= 1.0 and float(w.max()) <= 2.0 + 1e-12
    for f, want, sharp in ((1 / t, math.log(1 / t_min) / (1 - t_min), prop == "log-mixture"),
                           (t**2, (1 - t_min**3) / (3 * (1 - t_min)), True)):
        est = w * f
        se = float(est.std()) / math.sqrt(n)
        assert abs(float(est.mean()) - want) < Z * se + 1e-12 * want
        if sharp:  # (the 1/t^2 proposal is not made for a 1/t tail: its SE is larger there)
            assert 0.05 * want > 2 * Z * se  # a 5 % bias would be caught


@pytest.mark.parametrize("prop,power", [("log-mixture", 1), ("inverse-square-mixture", 2)])
def test_mixtures_bound_the_tail_they_are_made_for(prop, power):
    # Under p the estimate of E[t^-a] (t_min = 1e-5) has a huge variance; under the mixture
    # whose heavy component is proportional to t^-a, w t^-a <= 2 / (span q_a(t) t^a), a
    # constant (2 log(1/t_min) / span for a = 1, 2 (1/t_min - 1) / span for a = 2), so the
    # variance drops by orders of magnitude.
    n, t_min = 100_000, 1e-5
    g = _gen(1)
    u, c = torch.rand(n, generator=g, dtype=F64), torch.rand(n, generator=g, dtype=F64)
    t_p, _ = draw_times(u, c, t_min, 1.0, "uniform")
    t_q, w = draw_times(u, c, t_min, 1.0, prop)
    var_p = float(t_p.pow(-power).var())
    var_q = float((w * t_q.pow(-power)).var())
    assert var_q < 1e-2 * var_p
    bound = 2 * (math.log(1 / t_min) if power == 1 else 1 / t_min - 1) / (1 - t_min)
    assert float((w * t_q.pow(-power)).max()) <= bound * (1 + 1e-9)


def test_uniform_proposal_is_the_plain_draw():
    u = torch.rand(10, generator=_gen(2), dtype=F64)
    t, w = draw_times(u, torch.zeros(10, dtype=F64), 1e-3, 1.0, "uniform")
    torch.testing.assert_close(t, 1e-3 + (1 - 1e-3) * u, rtol=0, atol=0)
    assert bool((w == 1).all())
    with pytest.raises(ValueError, match="t_min"):
        draw_times(u, u, 0.0, 1.0, "log-mixture")
    with pytest.raises(ValueError, match="'bogus'"):
        PenaltyConfig("fp", 1.0, t_proposal="bogus")


def test_importance_weighted_fp_penalty_is_unbiased_for_the_closed_form_residual():
    # s = (A0 + t A1) x + b(t): E ||eps_hat||^2 = ||eps||^2 + tr Cov; the weighted penalty under
    # the log-mixture must have the mean of the unweighted one under uniform t (both estimated
    # on 20000 samples, with the same x(0), z and probes), within Z standard errors.
    sde = VPSDE()
    g = _gen(3)
    a0 = -torch.eye(2, dtype=F64) + 0.3 * torch.randn(2, 2, generator=g, dtype=F64)
    a1 = 0.5 * torch.randn(2, 2, generator=g, dtype=F64)
    b0, b1 = torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([0.3, 0.1], dtype=F64)
    fn, residual = timevarying_linear(a0, a1, b0, b1)
    n, t_min = 20000, 1e-3
    x0 = torch.randn(n, 2, generator=g, dtype=F64)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    u, c = torch.rand(n, generator=g, dtype=F64), torch.rand(n, generator=g, dtype=F64)
    vals = {}
    for prop in ("uniform", "log-mixture"):
        t, w = draw_times(u, c, t_min, 1.0, prop)
        cfg = PenaltyConfig("fp", 1.0, t_min=t_min, t_proposal=prop)
        out = penalized_dsm(fn, sde, x0, t, z, cfg, generator=_gen(4), weights=w)
        vals[prop] = out.terms["fp"].detach()
    d = vals["log-mixture"].mean() - vals["uniform"].mean()
    se = math.sqrt(float(vals["log-mixture"].var() + vals["uniform"].var()) / n)
    assert abs(float(d)) < Z * se
    assert abs(float(1.15 * vals["log-mixture"].mean() - vals["uniform"].mean())) > Z * se


def test_checkpoints_written_before_the_new_penalty_settings_resume_only_at_their_defaults():
    import json

    from scorefpe.training.loop import _config_diff
    from scorefpe.training.mnist_unet import mnist_run

    cfg = mnist_run("smoke", penalty="div", lam=0.1).to_dict()["penalty"]
    new = json.loads(json.dumps({"penalty": cfg}))
    old = {"penalty": {k: v for k, v in new["penalty"].items()
                       if k not in ("estimator", "h_x", "t_proposal")}}
    assert new["penalty"]["estimator"] == "autograd" and new["penalty"]["t_proposal"] == "uniform"
    assert _config_diff(old, new) == []
    fd = json.loads(json.dumps({"penalty": mnist_run("smoke", penalty="div", lam=0.1, estimator="fd",
                                                     t_proposal="log-mixture").to_dict()["penalty"]}))
    assert _config_diff(old, fd) == ["penalty.estimator", "penalty.t_proposal"]
