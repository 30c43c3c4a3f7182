"""The finite-difference-in-x estimators (`hutchinson-fd`, the projected FP residual, the
penalties' `estimator="fd"`) against closed forms and against the autograd estimators on the
same probes; the anchor-style references; the safe default t_min of the stencils."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from problems import timevarying_linear
from scorefpe import operators as op
from scorefpe.models import MLPConfig, MLPScoreNet, ScoreNet, ScoreNetConfig
from scorefpe.penalties import (
    PenaltyConfig,
    divergence_penalty,
    fp_diffusion_regulariser,
    fp_penalty,
    jacobian_penalty,
    penalized_dsm,
)
from scorefpe.sde import VESDE, VPSDE

F64 = torch.float64
Z = 5.0  # z-test bound: a correct estimator fails with probability ~6e-7 per test


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(seed: int = 0, dim: int = 3) -> MLPScoreNet:
    return MLPScoreNet(MLPConfig(dim=dim, hidden=16, depth=2, embed_dim=8), seed=seed).to(F64)


def _quadratic(q: torch.Tensor):
    """s_i(x) = x^T Q_i x (Q_i symmetric), J = 2 Q x: s(x + h v) - s(x) = h J v + h^2 v^T Q_i v."""

    def fn(x, t):
        return torch.einsum("bj,ijk,bk->bi", x, q, x) * (1 + t[:, None])

    return fn


# --------------------------------------------------------------------------------------------
# hutchinson-fd: J v by a forward difference.
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), log_h=st.floats(-4, -1))
def test_fd_jv_error_per_probe_is_the_closed_form_second_order_term(seed, log_h):
    # For a quadratic field the forward difference is J v + h (v^T Q_i v)_i exactly, so the
    # divergence estimate is v^T J v + h sum_i v_i v^T Q_i v, and ||J v||^2 gains the cross and
    # square terms; float64 round-off ~ 1e-16 |s| / h.
    g = _gen(seed)
    d, b, h = 3, 5, 10.0**log_h
    q = torch.randn(d, d, d, generator=g, dtype=F64)
    q = q + q.transpose(1, 2)
    fn = _quadratic(q)
    x = torch.randn(b, d, generator=g, dtype=F64)
    t = torch.rand(b, generator=g, dtype=F64)
    v = op.probes(1, x, generator=_gen(seed + 1))[0]
    jv = 2 * torch.einsum("ijk,bk,bj->bi", q, x, v) * (1 + t[:, None])
    corr = h * torch.einsum("bj,ijk,bk->bi", v, q, v) * (1 + t[:, None])
    div = op.divergence(fn, x, t, method="hutchinson-fd", generator=_gen(seed + 1), h_x=h)
    fro = op.jacobian_frobenius_sq(fn, x, t, method="hutchinson-fd", generator=_gen(seed + 1), h_x=h)
    scale = 1 + float(jv.abs().max() + corr.abs().max())
    tol = 1e-12 * scale * (1 + float(x.abs().max()) ** 2 / h)
    torch.testing.assert_close(div, (v * (jv + corr)).sum(-1), rtol=0, atol=tol * d)
    torch.testing.assert_close(fro, (jv + corr).pow(2).sum(-1), rtol=0, atol=tol * d * scale)


def test_fd_divergence_is_unbiased_for_a_quadratic_field():
    # The O(h) term h sum_i v_i v^T Q_i v is odd in v: mean zero. With h = 0.1 (per-probe error
    # large) the mean difference to the autograd estimate on the same 400000 probes must be zero
    # within Z standard errors (the Hutchinson noise cancels in the difference), and a bias of
    # 3 % of tr J is caught.
    g = _gen(3)
    q = torch.randn(3, 3, 3, generator=g, dtype=F64)
    q = q + q.transpose(1, 2)
    fn = _quadratic(q)
    n = 400000
    x = torch.randn(1, 3, generator=g, dtype=F64).expand(n, 3).contiguous()
    t = torch.full((n,), 0.2, dtype=F64)
    est = op.divergence(fn, x, t, method="hutchinson-fd", generator=_gen(4), h_x=0.1)
    ag = op.divergence(fn, x, t, method="hutchinson", generator=_gen(4))
    exact = float(op.divergence(fn, x[:1], t[:1]))
    diff = est - ag
    se = float(diff.std()) / math.sqrt(n)
    assert float(diff.abs().mean()) > 0.05  # the per-probe O(h) error is there ...
    assert abs(float(diff.mean())) < Z * se  # ... and averages out
    assert 0.03 * abs(exact) > 2 * Z * se


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fd_divergence_and_frobenius_match_autograd_on_the_unet(dtype):
    # Same probes: v^T J v (FD) against v^T J^T v (VJP), ||J v||^2 (FD) against ||J v||^2 with
    # J v by forward mode. Per probe the truncation is h/2 D^2 s[v, v]: relative to J v about
    # h |v| / l = h sqrt(D) / l for a field that bends on the scale l in x (l >= 1 for a net on
    # inputs in [0, 1]), so the bound is h sqrt(D); float32 round-off eps_32 |s| / (h |J v|)
    # (~1e-4) is below it. In float64 the error must shrink ~10x with h (first order).
    sde = VPSDE()
    net = ScoreNet(sde, ScoreNetConfig(width=0.25), seed=0).to(dtype)
    x = torch.rand(3, 1, 28, 28, generator=_gen(1)).to(dtype)
    t = torch.tensor([1e-3, 0.3, 0.9], dtype=dtype)
    d = 28 * 28
    v = op.probes(1, x, generator=_gen(2))[0]
    ag = op.divergence(net, x, t, method="hutchinson", generator=_gen(2)).detach()
    want = op.jacobian_vector_product(net, x, t, v).reshape(3, -1).pow(2).sum(-1)
    errs = []
    for h in (1e-3, 1e-4) if dtype == torch.float64 else (1e-3,):
        fd = op.divergence(net, x, t, method="hutchinson-fd", generator=_gen(2), h_x=h)
        fro = op.jacobian_frobenius_sq(net, x, t, method="hutchinson-fd", generator=_gen(2), h_x=h)
        e_div = float(((fd - ag).abs() / ag.abs()).max())
        e_fro = float(((fro - want).abs() / want).max())
        assert max(e_div, e_fro) < h * math.sqrt(d)
        errs.append((e_div, e_fro))
    if dtype == torch.float64:
        assert errs[1][0] < 0.2 * errs[0][0] and errs[1][1] < 0.2 * errs[0][1]


def test_jacobian_asymmetry_rejects_fd():
    with pytest.raises(ValueError, match="hutchinson"):
        op.jacobian_asymmetry_sq(lambda x, t: x, torch.ones(2, 2), 0.5, method="hutchinson-fd")
    with pytest.raises(ValueError, match="h_x"):
        op.divergence(lambda x, t: x, torch.ones(2, 2), 0.5, method="hutchinson-fd", h_x=0.0)


# --------------------------------------------------------------------------------------------
# The projected residual <eps, v> (FP-Diffusion App. C.4) by finite differences.
# --------------------------------------------------------------------------------------------


def _linear_problem(seed: int, d: int = 3):
    g = _gen(seed)
    a0 = -torch.eye(d, dtype=F64) + 0.3 * torch.randn(d, d, generator=g, dtype=F64)
    a1 = 0.5 * torch.randn(d, d, generator=g, dtype=F64)
    b0, b1 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    return a0, a1, *timevarying_linear(a0, a1, b0, b1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), log_h=st.floats(-4, -1), ve=st.booleans())
def test_projected_residual_is_the_closed_form_up_to_its_second_order_term(seed, log_h, ve):
    # s = (A0 + t A1) x + b(t): the FD divergence u^T A u is constant in x (cancels in D_v L),
    # the stencil is exact for linear t-dependence, and L is quadratic in x with Hessian
    # H = g^2 A^T A - c (A + A^T) (f = c x), so per probe exactly
    #     <eps_hat, v> = <eps, v> - h/2 v^T H v.
    sde = VESDE() if ve else VPSDE()
    a0, a1, fn, residual = _linear_problem(seed)
    h = 10.0**log_h
    g = _gen(seed + 1)
    x = torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.rand(6, generator=g, dtype=F64) * 0.99 + 0.01
    r = op.projected_fp_residual(fn, sde, x, t, n_probes=2, generator=_gen(seed + 2), h_x=h)
    pg = _gen(seed + 2)
    _u, v = op.probes(2, x, generator=pg), op.probes(2, x, generator=pg)
    a = a0[None] + t[:, None, None] * a1[None]
    g2, c = sde.diffusion(t) ** 2, sde.drift_coeff(t)
    hess = g2[:, None, None] * a.transpose(1, 2) @ a - c[:, None, None] * (a + a.transpose(1, 2))
    want = (v * residual(sde, x, t)).sum(-1) - h / 2 * torch.einsum("kbi,bij,kbj->kb", v, hess, v)
    scale = 1 + float(want.abs().max()) + float(g2.max()) * 100
    torch.testing.assert_close(r, want, rtol=0, atol=1e-9 * scale / h)


def test_projected_residual_converges_to_autograd_on_the_same_probes():
    # A nonlinear MLP in float64: the FD projection minus the autograd one (same divergence probe
    # u, same stencil) is O(h_x): shrinking h_x 10x shrinks the difference ~10x.
    sde = VPSDE()
    model = _mlp(seed=4)
    g = _gen(7)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    t = torch.rand(8, generator=g, dtype=F64) * 0.9 + 0.05
    eps = op.fp_residual(model, sde, x, t, method="estimated", generator=_gen(8))
    pg = _gen(8)
    op.probes(1, x, generator=pg)
    v = op.probes(1, x, generator=pg)[0]
    ref = (eps * v).sum(-1)
    err = []
    for h in (1e-3, 1e-4):
        r = op.projected_fp_residual(model, sde, x, t, generator=_gen(8), h_x=h)[0]
        err.append(float((r - ref).abs().max()))
    assert err[1] < 0.2 * err[0] and err[1] < 1e-2 * (1 + float(ref.abs().max()))


def test_fd_fp_penalty_is_unbiased_for_the_closed_form_residual():
    # E_{u,v} <eps_hat, v>^2 = ||eps||^2 + h^2/4 E (v^T H v)^2 (the odd cross term has mean 0);
    # at h_x = 1e-2 the h^2 term is below 1e-4 relative. Over 20000 points and probes the mean
    # of the FD penalty must equal the closed form's mean within Z standard errors, 10 % is caught.
    sde = VPSDE()
    _, _, fn, residual = _linear_problem(11, d=2)
    g = _gen(12)
    n = 20000
    x0 = torch.randn(n, 2, generator=g, dtype=F64)
    t = torch.rand(n, generator=g, dtype=F64) * 0.99 + 0.01
    xt, _ = sde.perturb(x0, t, g)
    est = fp_penalty(fn, sde, xt, t, t_min=1e-2, generator=_gen(13), estimator="fd").detach()
    exact = residual(sde, xt, t).pow(2).sum(-1)
    se = float((est - exact).std()) / math.sqrt(n)
    assert abs(float(est.mean() - exact.mean())) < Z * se
    assert abs(float(1.1 * est.mean() - exact.mean())) > Z * se


# --------------------------------------------------------------------------------------------
# Penalties with estimator="fd": the shared forward equals the stand-alone functions.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pen", ["jac", "div", "fp", "fpd"])
@pytest.mark.parametrize("estimator", ["autograd", "fd"])
def test_shared_forward_gives_the_standalone_terms(pen, estimator):
    sde = VPSDE()
    model = _mlp(seed=2)
    g = _gen(5)
    x0 = torch.randn(7, 3, generator=g, dtype=F64)
    t = torch.rand(7, generator=g, dtype=F64) * 0.9 + 0.05
    z = torch.randn(7, 3, generator=g, dtype=F64)
    cfg = PenaltyConfig(pen, 0.1, t_min=1e-3, estimator=estimator, alpha=0.3, beta=0.02,
                        omega="g2", m=2)
    out = penalized_dsm(model, sde, x0, t, z, cfg, generator=_gen(9))
    mean, std = sde.marginal(x0, t)
    xt = mean + std[:, None] * z
    kw = dict(generator=_gen(9), estimator=estimator)
    if pen == "jac":
        want = jacobian_penalty(model, xt, t, **kw)
    elif pen == "div":
        want = divergence_penalty(model, xt, t, **kw)
    elif pen == "fp":
        want = fp_penalty(model, sde, xt, t, t_min=1e-3, **kw)
    else:
        want = fp_diffusion_regulariser(model, sde, xt, t, alpha=0.3, beta=0.02, omega="g2", m=2,
                                        t_min=1e-3, **kw)
    torch.testing.assert_close(out.terms[pen], want, rtol=1e-10, atol=1e-12)
    (gw,) = torch.autograd.grad(out.total(), [model.net.hidden[0].weight])
    assert bool(torch.isfinite(gw).all()) and float(gw.abs().sum()) > 0


def test_fd_config_validation():
    with pytest.raises(ValueError, match="m = 2"):
        PenaltyConfig("fpd", 1.0, estimator="fd", m=1)
    with pytest.raises(ValueError, match="h_x"):
        PenaltyConfig("div", 1.0, estimator="fd", h_x=-1.0)
    with pytest.raises(ValueError, match="'bogus'"):
        PenaltyConfig("div", 1.0, estimator="bogus")


# --------------------------------------------------------------------------------------------
# Anchor-style references compute the same quantities on the same probes.
# --------------------------------------------------------------------------------------------


def test_anchor_references_equal_the_fast_paths():
    sde = VPSDE()
    model = _mlp(seed=6)
    g = _gen(14)
    x = torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.tensor([1e-3, 2e-3, 0.1, 0.5, 0.9995, 1.0], dtype=F64)
    v = op.probes(1, x, generator=_gen(15))[0]
    div = op.divergence(model, x, t, method="hutchinson", generator=_gen(15))
    torch.testing.assert_close(op.anchor_divergence(model, x, t, v), div, rtol=1e-12, atol=1e-12)
    fro = op.jacobian_frobenius_sq(model, x, t, method="hutchinson", generator=_gen(15))
    torch.testing.assert_close(op.anchor_jacobian_frobenius_sq(model, x, t, v), fro, rtol=1e-12, atol=1e-12)
    eps = op.fp_residual(model, sde, x, t, method="estimated", generator=_gen(15), t_min=1e-3)
    ref = op.anchor_fp_residual(model, sde, x, t, v, t_min=1e-3)
    torch.testing.assert_close(ref, eps, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# The stencil's default lower bound is safe for an eps-parameterised network (issue 18).
# --------------------------------------------------------------------------------------------


def test_default_t_min_never_evaluates_below_the_batch_for_an_eps_network():
    # s = -eps_theta(x, t) / sigma(t) is infinite at t = 0 under VP. With t = 1e-3 < h_s + ...,
    # the old default t_min = 0 let the nonuniform stencil reach t - h_s = 0; the default now
    # is the batch's smallest t, so every residual is finite, and no call goes below it.
    sde = VPSDE()
    mlp = _mlp(seed=1)
    seen = []

    def eps_net(x, t):
        seen.append(float(t.min()))
        return -mlp(x, t) / sde.marginal_std(t)[:, None]

    x = torch.randn(4, 3, generator=_gen(16), dtype=F64)
    t = torch.tensor([1e-3, 1e-3, 0.3, 0.7], dtype=F64)
    eps = op.fp_residual(eps_net, sde, x, t, method="estimated", generator=_gen(17))
    assert bool(torch.isfinite(eps).all()) and min(seen) >= 1e-3 * (1 - 1e-12)
    dts = op.time_derivative(eps_net, x, t, method="nonuniform")
    assert bool(torch.isfinite(dts).all())
    r = op.projected_fp_residual(eps_net, sde, x, t, generator=_gen(17))
    assert bool(torch.isfinite(r).all())
    # The old behaviour, asked for explicitly, is what the default prevents.
    bad = op.fp_residual(eps_net, sde, x, t, method="estimated", generator=_gen(17), t_min=0.0)
    assert not bool(torch.isfinite(bad).all())


def test_residual_estimator_object_equals_the_keyword_call_and_declares_its_order():
    sde = VPSDE()
    model = _mlp(seed=8)
    g = _gen(18)
    x = torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64) * 0.9 + 0.05
    est = op.FPResidualEstimator.estimated(time="central", h=2e-3)
    want = op.fp_residual(model, sde, x, t, method="estimated", time_method="central", h=2e-3,
                          generator=_gen(19))
    torch.testing.assert_close(est.residual(model, sde, x, t, generator=_gen(19)), want, rtol=0, atol=0)
    assert est.order == 2 and op.FPResidualEstimator.exact().order is None
    assert "zero" in op.FPResidualEstimator.exact().variance and "1" in est.variance
    ex = op.FPResidualEstimator.exact().residual(model, sde, x, t)
    torch.testing.assert_close(ex, op.fp_residual(model, sde, x, t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="projected_fp_residual"):
        op.FPResidualEstimator(divergence="hutchinson-fd")
    with pytest.raises(ValueError, match="h_s must be positive"):
        op.FPResidualEstimator.estimated(h_s=0.0)
