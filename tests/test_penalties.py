"""Losses and penalties: values against the core operators and closed forms, the estimators'
expectations (z-tests with a stated bound), and the weight lambda acting on the gradient."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorefpe import operators as op
from scorefpe.data.mixtures import GaussianMixture
from scorefpe.models import MLPConfig, MLPScoreNet, ScoreNet, ScoreNetConfig
from scorefpe.penalties import (
    LossTerms,
    Penalty,
    PenaltyConfig,
    divergence_penalty,
    dsm_loss,
    fp_diffusion_regulariser,
    fp_penalty,
    jacobian_penalty,
    penalized_dsm,
    score_norm_penalty,
)
from scorefpe.sde import VESDE, VPSDE

F64 = torch.float64
Z = 5.0  # z-test bound: a correct estimator fails with probability ~6e-7 per test


def _mlp(seed: int = 0, dim: int = 3) -> MLPScoreNet:
    return MLPScoreNet(MLPConfig(dim=dim, hidden=16, depth=2, embed_dim=8), seed=seed).to(F64)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Values equal the core operators' (same generator seed), on an MLP and on the U-Net.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["mlp", "unet"])
def test_penalties_equal_core_operators(net):
    sde = VPSDE()
    if net == "mlp":
        model, x = _mlp(), torch.randn(4, 3, generator=_gen(1), dtype=F64)
        t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=F64)
        t_min = 1e-3
    else:
        model = ScoreNet(sde, ScoreNetConfig(width=0.125), seed=0)
        x, t, t_min = torch.rand(2, 1, 28, 28, generator=_gen(1)), torch.tensor([2e-5, 0.4]), 1e-5
    d = x[0].numel()
    s = model(x, t)

    torch.testing.assert_close(score_norm_penalty(s), s.reshape(len(x), -1).pow(2).sum(-1) / d)
    pj = jacobian_penalty(model, x, t, generator=_gen(7))
    oj = op.jacobian_frobenius_sq(model, x, t, method="hutchinson", generator=_gen(7))
    torch.testing.assert_close(pj, oj / d, rtol=1e-6, atol=0)
    pd = divergence_penalty(model, x, t, generator=_gen(8))
    od = op.divergence(model, x, t, method="hutchinson", generator=_gen(8))
    torch.testing.assert_close(pd, od**2 / d, rtol=1e-6, atol=0)
    pf = fp_penalty(model, sde, x, t, t_min=t_min, generator=_gen(9))
    of = op.fp_residual(model, sde, x, t, method="estimated", generator=_gen(9), t_min=t_min)
    torch.testing.assert_close(pf, of.reshape(len(x), -1).pow(2).sum(-1), rtol=1e-5, atol=0)
    # The penalties keep the graph: parameters receive gradients through them.
    for val in (pj, pd, pf):
        assert val.requires_grad


@pytest.mark.parametrize("omega,m", [("one", 1), ("g2", 2)])
def test_fp_diffusion_regulariser_matches_its_formula(omega, m):
    sde, model = VESDE(), _mlp(seed=2)
    x = torch.randn(5, 3, generator=_gen(3), dtype=F64)
    t = torch.linspace(1e-3, 1.0, 5, dtype=F64)
    alpha, beta = 0.3, 0.01
    got = fp_diffusion_regulariser(
        model, sde, x, t, alpha=alpha, beta=beta, omega=omega, m=m, t_min=1e-3, generator=_gen(4)
    )
    # L[s] and eps share one divergence probe (one operator call).
    _, lop, eps = op.score_operator_and_fp_residual(
        model, sde, x, t, method="estimated", generator=_gen(4), t_min=1e-3
    )
    w = torch.ones_like(t) if omega == "one" else sde.diffusion(t) ** 2
    want = alpha * w * eps.norm(dim=1) ** m / 3**m + beta * lop.abs()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_fp_diffusion_regulariser_weights_g2_outside_the_norm_by_hand():
    # s = (A0 + t A1) x + b(t) has the closed-form residual eps (tests/problems.py). At one point,
    # with the exact residual and beta = 0: R = alpha g(t)^2 ||eps||^2 / D^2 (FP-Diffusion's code:
    # g^2 times the m-th power of the norm), not alpha g^4 ||eps||^2 / D^2 (omega inside).
    from problems import timevarying_linear

    sde = VESDE()
    a0 = torch.tensor([[-1.0, 0.2], [0.1, -0.5]], dtype=F64)
    a1 = torch.tensor([[0.3, 0.0], [0.0, -0.2]], dtype=F64)
    fn, residual = timevarying_linear(a0, a1, torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([0.3, 0.1], dtype=F64))
    x = torch.tensor([[0.5, -1.0]], dtype=F64)
    t = torch.tensor([0.4], dtype=F64)
    got = fp_diffusion_regulariser(fn, sde, x, t, alpha=0.15, omega="g2", m=2, t_min=1e-3, method="exact")
    eps = residual(sde, x, t)
    g2 = float(sde.diffusion(t) ** 2)
    want = 0.15 * g2 * float(eps.pow(2).sum()) / 2**2
    assert abs(float(got.detach()) - want) < 1e-12 * want
    assert abs(want * g2 - want) > 1e-3 * want  # g^2 != 1 here: the two readings differ


# --------------------------------------------------------------------------------------------
# What the estimators estimate: z-tests against the exact Jacobian (float64, tiny MLP).
# --------------------------------------------------------------------------------------------


def _replicated_point(seed: int, n: int):
    x = torch.randn(1, 3, generator=_gen(seed), dtype=F64).expand(n, 3).contiguous()
    t = torch.full((n,), 0.3, dtype=F64)
    return x, t


@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000))
def test_jacobian_penalty_is_unbiased(seed):
    model = _mlp(seed=seed % 7)
    n = 4000
    x, t = _replicated_point(seed, n)
    samples = jacobian_penalty(model, x, t, generator=_gen(seed)).detach()
    jac = op.jacobian(model, x[:1], t[:1])[0]
    exact = float(jac.pow(2).sum()) / 3
    se = float(samples.std()) / math.sqrt(n)
    assert abs(float(samples.mean()) - exact) < Z * se


def test_divergence_penalty_expectation_includes_the_hutchinson_variance():
    # E[(v^T J v)^2] / D = ((tr J)^2 + 2 ||J_sym||_F^2) / D for Gaussian v: the K=1 penalty of
    # both papers is biased upwards by the estimator's variance, and this test pins the size.
    model = _mlp(seed=3)
    n = 20000
    x, t = _replicated_point(11, n)
    samples = divergence_penalty(model, x, t, generator=_gen(5)).detach()
    jac = op.jacobian(model, x[:1], t[:1])[0]
    sym = 0.5 * (jac + jac.T)
    expect = (float(torch.trace(jac)) ** 2 + 2 * float(sym.pow(2).sum())) / 3
    se = float(samples.std()) / math.sqrt(n)
    assert abs(float(samples.mean()) - expect) < Z * se
    unbiased_target = float(torch.trace(jac)) ** 2 / 3
    assert float(samples.mean()) - unbiased_target > Z * se  # the bias is real and measurable


# --------------------------------------------------------------------------------------------
# DSM and SN against closed forms: Gaussian data N(0, c I) has s*(x, t) = -x / (a^2 c + v).
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_dsm_and_sn_of_the_true_score_match_closed_forms(sde):
    # At the DSM minimiser s* = E[-z / sigma | x(t)]: E||sigma s* + z||^2 = D a^2 c / (a^2 c + v)
    # and E||s*||^2 / D = 1 / (a^2 c + v).
    c, d, n = 0.5, 4, 40000
    g = _gen(0)
    x0 = math.sqrt(c) * torch.randn(n, d, generator=g, dtype=F64)
    t = torch.full((n,), 0.2, dtype=F64)
    z = torch.randn(n, d, generator=g, dtype=F64)
    a2 = float(sde.mean_coeff(t[:1])) ** 2
    v = float(sde.marginal_var(t[:1]))

    def true_score(x, tt):
        return -x / (a2 * c + v)

    out = penalized_dsm(true_score, sde, x0, t, z, PenaltyConfig(penalty="sn", lam=1.0))
    for name, want in (("dsm", d * a2 * c / (a2 * c + v)), ("sn", 1 / (a2 * c + v))):
        vals = out.terms[name].double()
        se = float(vals.std()) / math.sqrt(n)
        assert abs(float(vals.mean()) - want) < Z * se, name
    # A wrong sign of z in the loss would give D (1 + ...) instead: check it is not that.
    assert float(out.terms["dsm"].mean()) < d


def test_dsm_loss_formula_and_shape_check():
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    z = torch.tensor([[0.5, 0.0], [1.0, 1.0]])
    std = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(dsm_loss(s, z, std), torch.tensor([2.5**2 + 4.0**2, 1.0 + 0.25]))
    with pytest.raises(ValueError, match="same shape"):
        dsm_loss(s, z[:, :1], std)


def test_fp_penalty_vanishes_for_the_true_score_and_not_for_a_wrong_one():
    sde = VPSDE()
    gmm = GaussianMixture(
        torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]),
        torch.tensor([0.2, 0.3]),
    ).to(F64)
    x = torch.randn(6, 2, generator=_gen(2), dtype=F64)
    t = torch.linspace(0.05, 1.0, 6, dtype=F64)
    true = gmm.score_fn(sde)
    p_true = fp_penalty(true, sde, x, t, t_min=1e-3, method="exact")
    assert float(p_true.max()) < 1e-18
    p_wrong = fp_penalty(lambda a, b: true(a, b) + 0.5 * a.pow(2), sde, x, t, t_min=1e-3, method="exact")
    assert float(p_wrong.min()) > 1e-3


# --------------------------------------------------------------------------------------------
# The weight lambda: L = L_DSM + lambda P, so grad L(lambda) - grad L(0) = lambda grad mean(P).
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", ["sn", "jac", "div", "fp", "fpd"])
def test_lambda_scales_the_penalty_gradient(penalty):
    sde = VPSDE()
    model = _mlp(seed=1)
    g = _gen(6)
    x0 = torch.randn(8, 3, generator=g, dtype=F64)
    t = 1e-3 + (1 - 1e-3) * torch.rand(8, generator=g, dtype=F64)
    z = torch.randn(8, 3, generator=g, dtype=F64)
    params = list(model.parameters())

    def grads(lam: float, only_penalty: bool = False):
        cfg = PenaltyConfig(penalty=penalty, lam=lam, t_min=1e-3, alpha=0.5, beta=0.1)
        out = penalized_dsm(model, sde, x0, t, z, cfg, generator=_gen(3))
        target = out.terms[penalty].mean() if only_penalty else out.total()
        gs = torch.autograd.grad(target, params, allow_unused=True)  # J ignores the output bias
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]

    lam = 0.37
    g0, g1, gp = grads(0.0), grads(lam), grads(lam, only_penalty=True)
    diff = torch.cat([(a - b).flatten() for a, b in zip(g1, g0)])
    want = lam * torch.cat([p.flatten() for p in gp])
    assert float(diff.abs().max()) > 0, "lambda must change the gradient"
    # float64 throughout: the identity holds to round-off.
    torch.testing.assert_close(diff, want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))


def test_unet_penalty_weight_changes_the_gradient():
    sde = VPSDE()
    model = ScoreNet(sde, ScoreNetConfig(width=0.125), seed=0)
    g = _gen(0)
    x0 = torch.rand(2, 1, 28, 28, generator=g)
    t = torch.tensor([1e-4, 0.5])
    z = torch.randn(x0.shape, generator=g)

    def grad(lam: float) -> torch.Tensor:
        out = penalized_dsm(model, sde, x0, t, z, PenaltyConfig("div", lam), generator=_gen(1))
        (gw,) = torch.autograd.grad(out.total(), [model.net.conv1.weight])
        return gw

    assert not torch.allclose(grad(0.0), grad(1e-2))


# --------------------------------------------------------------------------------------------
# Objective plumbing and bad input.
# --------------------------------------------------------------------------------------------


def test_penalized_dsm_terms_weights_and_sub_batch():
    sde = VPSDE()
    model = _mlp()
    x0 = torch.randn(10, 3, dtype=F64)
    t = torch.full((10,), 0.5, dtype=F64)
    z = torch.randn(10, 3, dtype=F64)
    out = penalized_dsm(model, sde, x0, t, z, PenaltyConfig("none"))
    assert set(out.terms) == {"dsm"} and out.terms["dsm"].shape == (10,)
    out = penalized_dsm(model, sde, x0, t, z, PenaltyConfig("jac", 0.1, sub_batch=4), generator=_gen())
    assert out.terms["jac"].shape == (4,) and out.weights == {"dsm": 1.0, "jac": 0.1}
    want = out.terms["dsm"].mean() + 0.1 * out.terms["jac"].mean()
    torch.testing.assert_close(out.total(), want)
    with pytest.raises(ValueError, match="non-zero weight"):
        LossTerms({"a": torch.ones(2)}, {"a": 0.0}).total()


@pytest.mark.parametrize("pen", ["jac", "div", "fp"])
@pytest.mark.parametrize("sub_batch", [None, 3])
def test_shared_forward_gives_the_standalone_terms(pen, sub_batch):
    # penalized_dsm takes s for the DSM term from the penalty operator's own forward: the terms
    # must equal plain DSM on model(x(t), t) and the stand-alone penalty with the same probes.
    sde = VPSDE()
    model = _mlp(seed=2)
    g = _gen(5)
    x0 = torch.randn(7, 3, generator=g, dtype=F64)
    t = torch.rand(7, generator=g, dtype=F64) * 0.9 + 0.05
    z = torch.randn(7, 3, generator=g, dtype=F64)
    cfg = PenaltyConfig(pen, 0.1, t_min=1e-3, sub_batch=sub_batch)
    out = penalized_dsm(model, sde, x0, t, z, cfg, generator=_gen(9))
    mean, std = sde.marginal(x0, t)
    xt = mean + std[:, None] * z
    torch.testing.assert_close(out.terms["dsm"], dsm_loss(model(xt, t), z, std), rtol=1e-12, atol=1e-12)
    k = 7 if sub_batch is None else sub_batch
    xs, ts = xt[:k], t[:k]
    if pen == "jac":
        want = jacobian_penalty(model, xs, ts, generator=_gen(9))
    elif pen == "div":
        want = divergence_penalty(model, xs, ts, generator=_gen(9))
    else:
        want = fp_penalty(model, sde, xs, ts, t_min=1e-3, generator=_gen(9))
    torch.testing.assert_close(out.terms[pen], want, rtol=1e-10, atol=1e-12)
    (gw,) = torch.autograd.grad(out.total(), [model.net.hidden[0].weight])
    assert bool(torch.isfinite(gw).all()) and float(gw.abs().sum()) > 0


def _mean_over_batches(fn, sde, cfg, sample_x0, n_rep, b, g):
    vals = []
    for _ in range(n_rep):
        x0 = sample_x0(b)
        t = torch.rand(b, generator=g, dtype=F64) * 0.99 + 0.01
        z = torch.randn_like(x0)
        out = penalized_dsm(fn, sde, x0, t, z, cfg, generator=g)
        vals.append(out.terms[cfg.penalty.value].mean().detach())
    return torch.stack(vals)


def test_sub_batch_jacobian_penalty_is_unbiased_for_the_exact_operator():
    # The faster estimator (K = 1 probe on k = 4 of B = 16 samples) against the exact operator:
    # over R batches (fresh x(0), t, z, probes) its mean must equal E ||J||_F^2 / D computed with
    # the exact Jacobian on 20000 points, within Z standard errors of the difference.
    sde = VPSDE()
    gm = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=F64),
                         torch.stack([0.3 * torch.eye(2, dtype=F64), 0.5 * torch.eye(2, dtype=F64)]))
    g = _gen(21)
    model = _mlp(seed=3, dim=2)
    n_rep = 2000
    vals = _mean_over_batches(model, sde, PenaltyConfig("jac", 1.0, t_min=1e-3, sub_batch=4),
                              lambda n: gm.sample(n, g), n_rep, 16, g)
    x0 = gm.sample(20000, g)
    t = torch.rand(20000, generator=g, dtype=F64) * 0.99 + 0.01
    xt, _ = sde.perturb(x0, t, g)
    exact = op.jacobian_frobenius_sq(model, xt, t).detach() / 2
    se = math.sqrt(float(vals.var()) / n_rep + float(exact.var()) / 20000)
    assert abs(float(vals.mean() - exact.mean())) < Z * se
    assert abs(float(1.25 * vals.mean() - exact.mean())) > Z * se  # power: 25 % off is caught


def test_sub_batch_fp_penalty_is_unbiased_for_the_closed_form_residual():
    # s = (A0 + t A1) x + b(t) is affine in x and linear in t: the Hutchinson estimate of div s is
    # constant in x (so grad_x L_hat is exact) and the stencil is exact for linear t-dependence,
    # so E ||eps_hat||^2 on a sub-batch must equal E ||eps||^2 of the closed-form residual.
    from problems import timevarying_linear

    sde = VPSDE()
    g = _gen(22)
    a0, a1 = -torch.eye(2, dtype=F64) + 0.3 * torch.randn(2, 2, generator=g, dtype=F64), 0.5 * torch.randn(2, 2, generator=g, dtype=F64)
    fn, residual = timevarying_linear(a0, a1, torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([0.3, 0.1], dtype=F64))
    n_rep = 3000
    vals = _mean_over_batches(fn, sde, PenaltyConfig("fp", 1.0, t_min=1e-3, sub_batch=4),
                              lambda n: torch.randn(n, 2, generator=g, dtype=F64), n_rep, 16, g)
    x0 = torch.randn(20000, 2, generator=g, dtype=F64)
    t = torch.rand(20000, generator=g, dtype=F64) * 0.99 + 0.01
    xt, _ = sde.perturb(x0, t, g)
    exact = residual(sde, xt, t).pow(2).sum(-1)
    se = math.sqrt(float(vals.var()) / n_rep + float(exact.var()) / 20000)
    assert abs(float(vals.mean() - exact.mean())) < Z * se
    assert abs(float(1.3 * vals.mean() - exact.mean())) > Z * se  # heavy-tailed: 30 % is caught


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(penalty="l2"), r"'l2'.*'none', 'fp', 'sn', 'jac', 'div', 'fpd'"),
        (dict(penalty="div", lam=-1e-3), "lam must be >= 0"),
        (dict(penalty="div", lam=float("nan")), "lam"),
        (dict(probe="uniform"), "'uniform'"),
        (dict(sub_batch=0), "sub_batch"),
        (dict(alpha=-1.0), "alpha"),
        (dict(m=0), "m must be"),
        (dict(omega="g3"), "'g3'"),
        (dict(t_min=0.0), "t_min"),
    ],
)
def test_bad_config_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PenaltyConfig(**kwargs)


def test_penalty_enum_values():
    assert [p.value for p in Penalty] == ["none", "fp", "sn", "jac", "div", "fpd"]
