"""Operators: exact identities on analytic fields, unbiased estimators, bad input.

Tolerances: exact operators are held to float64 round-off (1e-10 relative after a few hundred
flops); stochastic estimators to a z-score bound of 5 with stated seeds (for a correct estimator
P(|z| > 5) < 6e-7 per comparison); finite differences to their truncation order.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from problems import DT, linear_field, random_spd, timevarying_linear
from scorefpe import (
    GaussianMixture,
    VESDE,
    VPSDE,
    divergence,
    fp_operator,
    fp_residual,
    jacobian,
    jacobian_asymmetry_sq,
    jacobian_frobenius_sq,
    scalar_fp_residual,
    time_derivative,
)
from scorefpe.sde import SubVPSDE

SDE_LIST = [VPSDE(), VESDE(), SubVPSDE()]
sde_strategy = st.sampled_from(SDE_LIST)
Z = 5.0


def _mixture(seed: int, k: int, d: int, zero_cov: bool) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, generator=g, dtype=DT) + 0.1
    mu = 3 * torch.randn(k, d, generator=g, dtype=DT)
    cov = torch.stack([random_spd(d, g) for _ in range(k)])
    if zero_cov:
        cov[0] = 0.0
    return GaussianMixture(w, mu, cov)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10**6), k=st.integers(1, 3), d=st.integers(1, 4),
    t=st.floats(1e-3, 1.0), sde=sde_strategy, zero_cov=st.booleans(),
)
def test_random_mixture_scores_have_zero_residual(seed, k, d, t, sde, zero_cov):
    gm = _mixture(seed, k, d, zero_cov)
    g = torch.Generator().manual_seed(seed + 1)
    tt = torch.full((6,), t, dtype=DT)
    x, _ = sde.perturb(gm.sample(6, g), tt, g)
    sf = gm.score_fn(sde)
    eps = fp_residual(sf, sde, x, tt)
    dts = time_derivative(sf, x, tt)
    scale = dts.norm(dim=1) + 1e-8 * dts.norm(dim=1).max() + 1e-300
    assert float((eps.norm(dim=1) / scale).max()) < 1e-9
    r = scalar_fp_residual(sf, gm.log_prob_fn(sde), sde, x, tt)
    lop = fp_operator(sf, sde, x, tt).abs()
    assert float((r.abs() / (lop + 1e-8 * lop.max() + 1e-300)).max()) < 1e-9


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), d=st.integers(1, 5))
def test_linear_fields_exact(seed, d):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=DT)
    b = torch.randn(d, generator=g, dtype=DT)
    fn = linear_field(a, b)
    x = torch.randn(4, d, generator=g, dtype=DT)
    t = torch.full((4,), 0.5, dtype=DT)
    tol = 1e-12 * (1 + a.abs().sum())
    assert torch.allclose(divergence(fn, x, t), torch.full((4,), float(a.trace()), dtype=DT), atol=tol, rtol=0)
    assert torch.allclose(jacobian(fn, x, t), a.expand(4, d, d), atol=tol, rtol=0)
    asym = float((a - a.T).pow(2).sum())
    assert torch.allclose(jacobian_asymmetry_sq(fn, x, t), torch.full((4,), asym, dtype=DT), atol=tol**2 * 10, rtol=1e-12)
    fro = float(a.pow(2).sum())
    assert torch.allclose(jacobian_frobenius_sq(fn, x, t), torch.full((4,), fro, dtype=DT), rtol=1e-12, atol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), d=st.integers(1, 4), sde=sde_strategy, t=st.floats(1e-3, 1.0))
def test_residual_of_non_score_matches_independent_closed_form(seed, d, sde, t):
    g = torch.Generator().manual_seed(seed)
    a0, a1 = torch.randn(d, d, generator=g, dtype=DT), torch.randn(d, d, generator=g, dtype=DT)
    b0, b1 = torch.randn(d, generator=g, dtype=DT), torch.randn(d, generator=g, dtype=DT)
    fn, residual = timevarying_linear(a0, a1, b0, b1)
    x = torch.randn(5, d, generator=g, dtype=DT)
    tt = torch.full((5,), t, dtype=DT)
    eps = fp_residual(fn, sde, x, tt)
    ref = residual(sde, x, tt)
    assert float((eps - ref).norm() / ref.norm()) < 1e-10


def _z(samples: torch.Tensor, exact: torch.Tensor) -> float:
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return float(((samples.mean(0) - exact).abs() / se.clamp_min(1e-300)).max())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10**6), d=st.integers(2, 5), probe=st.sampled_from(["gaussian", "rademacher"]))
def test_estimators_unbiased_and_a_biased_one_fails(seed, d, probe):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=DT)
    fn = linear_field(a, torch.zeros(d, dtype=DT))
    n = 20000
    x = torch.randn(1, d, generator=g, dtype=DT).expand(n, d)
    t = torch.full((n,), 0.5, dtype=DT)
    kw = dict(method="hutchinson", probe=probe, generator=g)
    div = divergence(fn, x, t, **kw)
    fro = jacobian_frobenius_sq(fn, x, t, **kw)
    asym = jacobian_asymmetry_sq(fn, x, t, **kw)
    exact_div = a.trace()
    exact_fro = a.pow(2).sum()
    exact_asym = (a - a.T).pow(2).sum()
    for est, exact in ((div, exact_div), (fro, exact_fro), (asym, exact_asym)):
        if float(est.std()) < 1e-12 * float(exact.abs() + 1):  # Rademacher can be exact
            assert torch.allclose(est.mean(), exact, rtol=1e-12, atol=1e-12)
            continue
        assert _z(est[:, None], exact) < Z
    # Power: an estimator off by 10 % of the Frobenius norm is rejected at this sample size.
    assert _z((1.1 * fro)[:, None], exact_fro) > Z


def test_hutchinson_variance_matches_theory():
    g = torch.Generator().manual_seed(3)
    d, n = 4, 40000
    a = torch.randn(d, d, generator=g, dtype=DT)
    fn = linear_field(a, torch.zeros(d, dtype=DT))
    x = torch.zeros(n, d, dtype=DT)
    t = torch.full((n,), 0.5, dtype=DT)
    sym = 0.5 * (a + a.T)
    theory = {"gaussian": 2 * sym.pow(2).sum(), "rademacher": 2 * (sym.pow(2).sum() - sym.diagonal().pow(2).sum())}
    for probe, var in theory.items():
        est = divergence(fn, x, t, method="hutchinson", probe=probe, generator=g)
        dev2 = (est - a.trace()) ** 2
        se = (dev2.var() / n).sqrt()
        assert abs(float(dev2.mean() - var)) < Z * float(se)


def test_more_probes_reduce_variance_by_k():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, generator=g, dtype=DT)
    fn = linear_field(a, torch.zeros(3, dtype=DT))
    n = 20000
    x = torch.zeros(n, 3, dtype=DT)
    t = torch.full((n,), 0.5, dtype=DT)
    v1 = divergence(fn, x, t, method="hutchinson", n_probes=1, generator=g).var()
    v8 = divergence(fn, x, t, method="hutchinson", n_probes=8, generator=g).var()
    # Ratio of two sample variances of ~Gaussian-tailed data: relative SE ~ sqrt(2/n) * a few.
    assert abs(float(v1 / v8) / 8 - 1) < 0.1


def _as_image(fn, shape):
    """Wrap a flat field fn(x (B, D), t) as one on images (B, *shape), pixels in row-major order."""

    def img(x, t):
        return fn(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    return img


@pytest.mark.parametrize("sde", SDE_LIST, ids=lambda s: type(s).__name__)
def test_image_shaped_residual_matches_closed_form(sde):
    # s = (A0 + t A1) x + b(t) on D = 12 pixels shaped (3, 2, 2): the residual is known in closed
    # form (problems.timevarying_linear). Exact mode: a few hundred float64 flops on O(10) terms,
    # so 1e-10 relative leaves 1e4 x eps margin; a mis-ordered reshape or a div f = c instead of
    # c D (per-pixel drift) is off by O(1). Estimated mode: for a field affine in x the Hutchinson
    # estimate v^T A(t) v does not depend on x, so grad_x L_hat = grad_x L exactly (zero
    # variance), and the (h_s, h_d) stencil is exact for linear t-dependence up to round-off
    # eps |s| / h ~ 1e-12: the estimate must equal the closed form to the same 1e-10.
    g = torch.Generator().manual_seed(0)
    d, shape = 12, (3, 2, 2)
    a0, a1 = torch.randn(d, d, generator=g, dtype=DT), torch.randn(d, d, generator=g, dtype=DT)
    b0, b1 = torch.randn(d, generator=g, dtype=DT), torch.randn(d, generator=g, dtype=DT)
    flat, residual = timevarying_linear(a0, a1, b0, b1)
    fn = _as_image(flat, shape)
    x = torch.randn(4, *shape, generator=g, dtype=DT)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=DT)
    ref = residual(sde, x.reshape(4, d), t).reshape(x.shape)
    scale = float(ref.norm())
    torch.testing.assert_close(divergence(fn, x, t), torch.einsum("bii->b", a0[None] + t[:, None, None] * a1[None]),
                               rtol=0, atol=1e-12 * float(a0.abs().sum() + a1.abs().sum()))
    eps = fp_residual(fn, sde, x, t)
    assert eps.shape == x.shape
    assert float((eps - ref).norm()) <= 1e-10 * scale
    est = fp_residual(fn, sde, x, t, method="estimated", n_probes=3, generator=g)
    assert est.shape == x.shape
    assert float((est - ref).norm()) <= 1e-10 * scale


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_image_shaped_estimated_residual_is_unbiased(probe):
    # A Gaussian-mixture score on D = 4 pixels shaped (1, 2, 2): its Jacobian depends on x, so the
    # Hutchinson residual is random. Its exact residual is 0 (true score); adding
    # sin(2 pi t) M x gives a non-zero target, computed by the exact operator on flat inputs. With
    # N single-probe estimates at each point, the mean must lie within Z standard errors
    # SE = std / sqrt(N) of the target (P(max |z| > 5) < 6e-7 per entry, 16 entries per case);
    # a 1 % bias fails (SE <= 2e-3 |eps| here). time_method="exact" removes the stencil's
    # O(h^2) bias so that only the probe noise is tested.
    gm = _mixture(7, 2, 4, False)
    sde = VPSDE()
    g = torch.Generator().manual_seed(1)
    t0 = torch.tensor([0.2, 0.5, 0.8, 0.95], dtype=DT)
    x0, _ = sde.perturb(gm.sample(4, g), t0, g)
    m = torch.tensor([[0.5, 1.0, 0.0, 0.0], [-1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0],
                      [0.0, 0.0, 0.0, 0.5]], dtype=DT)
    true = gm.score_fn(sde)

    def perturbed(x, t):
        return true(x, t) + torch.sin(2 * math.pi * t)[:, None] * (x @ m.T)

    n = 2000
    xi, ti = x0.repeat(n, 1).reshape(4 * n, 1, 2, 2), t0.repeat(n)
    for flat, zero_target in ((true, True), (perturbed, False)):
        target = fp_residual(flat, sde, x0, t0)
        dts = time_derivative(flat, x0, t0)
        # Where one component dominates, J is constant to round-off and the estimate's spread is
        # round-off too: floor the SE at float64 eps x (size of the terms) x 1e4 for the
        # flops/cancellation in grad_x L (observed spread there ~1e-17..1e-15).
        floor = 1e-12 * float(dts.abs().max())
        if zero_target:
            assert float(target.norm()) <= 1e-9 * float(dts.norm())
        else:
            assert float(target.norm(dim=1).min()) > 1e-2
        est = fp_residual(_as_image(flat, (1, 2, 2)), sde, xi, ti, method="estimated",
                          time_method="exact", probe=probe, generator=g)
        assert est.shape == xi.shape
        est = est.reshape(n, 4, 4)
        se = est.std(0) / math.sqrt(n)
        assert float(se.max()) > 1e3 * floor  # genuinely random at some point: not vacuous
        z = (est.mean(0) - target).abs() / se.clamp_min(floor)
        assert float(z.max()) < Z, (zero_target, float(z.max()))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), sde=sde_strategy, t=st.floats(0.01, 0.99), d=st.integers(1, 3))
def test_exact_operators_agree_with_finite_differences_of_closed_forms(seed, sde, t, d):
    gm = _mixture(seed, 2, d, False)
    g = torch.Generator().manual_seed(seed)
    tt = torch.full((4,), t, dtype=DT)
    x, _ = sde.perturb(gm.sample(4, g), tt, g)
    sf = gm.score_fn(sde)
    h = 1e-5
    # Central differences of the closed form in x and t: truncation ~h^2 s''' and round-off
    # ~1e-16 |s| / h, about 1e-10 relative for these scales; 1e-6 leaves room for steep modes.
    fd_div = sum(
        (sf(x + h * e, tt) - sf(x - h * e, tt))[:, i] / (2 * h)
        for i, e in enumerate(torch.eye(d, dtype=DT))
    )
    div = divergence(sf, x, tt)
    assert float((div - fd_div).abs().max()) <= 1e-6 * (1 + float(div.abs().max()))
    fd_t = (sf(x, tt + h) - sf(x, tt - h)) / (2 * h)
    dts = time_derivative(sf, x, tt)
    assert float((dts - fd_t).abs().max()) <= 1e-6 * (1 + float(dts.abs().max()))


def test_stencils_never_leave_the_time_interval():
    seen = []

    def spy(x, t):
        seen.append(t.detach().clone())
        return x * torch.sqrt(VPSDE().marginal_var(t))[:, None]  # NaN for t < 0

    x = torch.ones(4, 2, dtype=DT)
    t = torch.tensor([1e-5, 2e-4, 0.5, 1.0], dtype=DT)
    for method in ("central", "nonuniform"):
        seen.clear()
        out = time_derivative(spy, x, t, method=method, t_min=1e-5, t_max=1.0, h=1e-4)
        assert torch.isfinite(out).all()
        allt = torch.cat(seen)
        assert float(allt.min()) >= 1e-5 and float(allt.max()) <= 1.0


def test_one_sided_stencils_are_second_order():
    def fn(x, t):
        return x * torch.sin(3 * t)[:, None]

    x = torch.ones(2, 1, dtype=DT)
    t = torch.tensor([0.0, 1.0], dtype=DT)  # forward at t_min = 0, backward at T = 1
    exact = 3 * torch.cos(3 * t)[:, None]
    errs = [float((time_derivative(fn, x, t, method="central", h=h) - exact).abs().max()) for h in (1e-2, 5e-3)]
    assert 3.6 < errs[0] / errs[1] < 4.4  # order 2: halving h divides the error by 4


def test_gradients_reach_parameters(tmp_path):
    # gradcheck in float64 through the exact residual: a third-order autograd path.
    torch.manual_seed(0)
    w = torch.randn(2, 2, dtype=DT, requires_grad=True)
    x = torch.randn(3, 2, dtype=DT)
    t = torch.full((3,), 0.4, dtype=DT)

    def residual_of(w):
        fn = lambda xx, tt: torch.tanh(xx @ w.T) * (1 + tt[:, None])  # noqa: E731
        return fp_residual(fn, VPSDE(), x, t, create_graph=True)

    assert torch.autograd.gradcheck(residual_of, (w,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.ones(3)), "batch axis"),
        (dict(t=torch.ones(2)), "shape"),
        (dict(t=torch.full((3,), 1.5)), r"t must lie in"),
        (dict(t=torch.full((3,), -0.1)), r"t must lie in"),
        (dict(x=torch.full((3, 2), float("nan"))), "NaN"),
        (dict(method="sideways"), "'sideways'"),
        (dict(probe="uniform", method="estimated"), "'uniform'"),
        (dict(n_probes=0, method="estimated"), "n_probes"),
        (dict(score_fn=lambda x, t: x[:, :1]), "shaped like x"),
    ],
)
def test_bad_input_gives_clear_errors(kwargs, match):
    args = dict(score_fn=lambda x, t: -x, sde=VPSDE(), x=torch.ones(3, 2, dtype=DT), t=torch.full((3,), 0.5, dtype=DT))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fp_residual(**args)


def test_time_derivative_bad_steps():
    with pytest.raises(ValueError, match="h must be positive"):
        time_derivative(lambda x, t: x, torch.ones(2, 1), 0.5, method="central", h=0.0)
    with pytest.raises(ValueError, match="too large"):
        time_derivative(lambda x, t: x, torch.ones(1, 1), 0.5, method="central", h=0.4, t_min=0.2, t_max=0.8)


def test_score_and_estimates_share_one_pass_and_match():
    from scorefpe.operators import score_and_divergence, score_and_jacobian_frobenius_sq

    calls = []
    a = torch.randn(3, 3, dtype=DT, generator=torch.Generator().manual_seed(5))

    def fn(x, t):
        calls.append(x.shape[0])
        return torch.tanh(x @ a.T) * (1 + t[:, None])

    x = torch.randn(6, 3, dtype=DT)
    t = torch.full((6,), 0.3, dtype=DT)
    s, div = score_and_divergence(fn, x, t, method="hutchinson", generator=torch.Generator().manual_seed(1))
    assert calls == [6]
    torch.testing.assert_close(s, fn(x, t))
    ref = divergence(fn, x, t, method="hutchinson", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(div, ref, rtol=1e-14, atol=1e-14)
    s2, fro = score_and_jacobian_frobenius_sq(fn, x, t, generator=torch.Generator().manual_seed(2))
    ref = jacobian_frobenius_sq(fn, x, t, method="hutchinson", generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fro, ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(s2, s)


def test_float32_rounding_of_t_min_is_accepted_but_real_violations_are_not():
    t = torch.full((2,), 1e-5, dtype=torch.float32)  # 9.99999975e-06 < 1e-5
    out = time_derivative(lambda x, tt: x * tt[:, None], torch.ones(2, 1), t, method="central", t_min=1e-5, h=1e-6)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="t must lie in"):
        time_derivative(lambda x, tt: x, torch.ones(2, 1), torch.full((2,), 0.99e-5), t_min=1e-5)


# --------------------------------------------------------------------------------------------
# Jacobian diagonal (pixel-wise divergence contributions).
# --------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 3), d=st.integers(1, 5), t=st.floats(1e-3, 1.0),
       chunk=st.sampled_from([None, 1, 2]))
def test_exact_jacobian_diagonal_matches_closed_form_hessian(seed, k, d, t, chunk):
    from scorefpe import jacobian_diagonal

    sde = VPSDE()
    gm = _mixture(seed, k, d, False)
    g = torch.Generator().manual_seed(seed + 7)
    tt = torch.full((5,), t, dtype=DT)
    x, _ = sde.perturb(gm.sample(5, g), tt, g)
    ref = gm.score_jacobian(x, tt, sde).diagonal(dim1=1, dim2=2)
    got = jacobian_diagonal(gm.score_fn(sde), x, tt, chunk_size=chunk)
    scale = float(gm.score_jacobian(x, tt, sde).abs().max()) + 1.0
    assert float((got - ref).abs().max()) < 1e-11 * scale
    # Summed, it is the divergence.
    torch.testing.assert_close(got.sum(-1), divergence(gm.score_fn(sde), x, tt), rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_jacobian_diagonal_unbiased_with_theoretical_variance(probe):
    from scorefpe import jacobian_diagonal

    g = torch.Generator().manual_seed(11)
    d, n = 4, 40000
    a = torch.randn(d, d, generator=g, dtype=DT)
    fn = linear_field(a, torch.zeros(d, dtype=DT))
    x = torch.zeros(n, d, dtype=DT)
    t = torch.full((n,), 0.5, dtype=DT)
    est = jacobian_diagonal(fn, x, t, method="hutchinson", probe=probe, generator=g)
    col2 = a.pow(2).sum(0)  # sum_r J_ri^2
    var = col2 - a.diagonal() ** 2 if probe == "rademacher" else col2 + a.diagonal() ** 2
    se = est.std(0) / math.sqrt(n)
    assert float(((est.mean(0) - a.diagonal()).abs() / se).max()) < Z
    # Variance per entry against theory: relative SE of a sample variance ~ sqrt(kurtosis / n).
    rel = (est.var(0) / var - 1).abs()
    assert float(rel.max()) < 0.1
    # Power: the diagonal of A^T (a plausible transposition bug) differs from J^T v's diagonal only
    # in variance, so also reject the wrong *mean*: the row sums instead of the diagonal.
    assert float(((est.mean(0) - a.sum(1)).abs() / se).max()) > Z


def test_jacobian_diagonal_image_shaped():
    from scorefpe import jacobian_diagonal

    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=g, dtype=DT)

    def fn(x, t):
        return (x.reshape(x.shape[0], -1) @ a.T).reshape(x.shape)

    x = torch.randn(3, 3, 2, 2, generator=g, dtype=DT)
    t = torch.full((3,), 0.3, dtype=DT)
    got = jacobian_diagonal(fn, x, t, chunk_size=5)
    assert got.shape == x.shape
    torch.testing.assert_close(got, a.diagonal().reshape(1, 3, 2, 2).expand(3, 3, 2, 2))
    with pytest.raises(ValueError, match="n_probes"):
        jacobian_diagonal(fn, x, t, method="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="method"):
        jacobian_diagonal(fn, x, t, method="bogus")
