"""Symbolic derivation of the score FPE (issue 3): derivation, closed forms, torch cross-check."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
import sympy as sp
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorefpe.cli.main import main
from scorefpe.symbolic import derivation as S
from scorefpe.operators import fp_residual
from scorefpe.sde import SubVPSDE, VESDE, VPSDE
from scorefpe.validation import symbolic_checks as V

R = sp.Rational
CLOSED_FORM_TOL = 1e-12  # mpmath at 50 digits: a true zero evaluates to ~1e-45 or below


def _rng_points(rng: random.Random, n: int, dim: int) -> list[list[sp.Rational]]:
    """n random rational (x, t), x in [-3, 3]^dim, t in [1e-3, 1]."""
    return [
        [*(R(rng.randint(-3000, 3000), 1000) for _ in range(dim)), R(rng.randint(1, 1000), 1000)]
        for _ in range(n)
    ]


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 4, 2.0, True, -1])
def test_bad_dimension_is_rejected(dim):
    with pytest.raises(ValueError, match="1..3"):
        S.coordinates(dim)


def test_unknown_sde_and_parameters_are_rejected():
    with pytest.raises(ValueError, match="'foo'.*ve"):
        S.symbolic_sde("foo", 2)
    with pytest.raises(ValueError, match="beta_mx"):
        S.symbolic_sde("vp", 2, beta_mx=3.0)
    with pytest.raises(ValueError, match="sigma_min"):
        S.symbolic_sde("ve", 2, sigma_min=100.0)
    with pytest.raises(ValueError, match="'foo'"):
        V.run_symbolic_checks("foo")


def test_symbolic_sde_takes_parameters():
    sde = S.symbolic_sde("vp", 1, beta_min=0.5, beta_max=7.0)
    assert [v for _, v in sde.params] == [R(1, 2), 7]


# --------------------------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_derived_operator_equals_table3(name, dim):
    sde, fpe = S.derive(name, dim)
    assert S.is_zero(fpe.operator - S.table3_operator(sde, fpe.s))
    # The score form is the x-gradient of the scalar form, component by component.
    for xi, rhs, res, si in zip(fpe.x, fpe.score_rhs, fpe.residual, fpe.s):
        assert sp.expand(rhs - sp.diff(fpe.operator, xi)) == 0
        assert sp.expand(res - (sp.Derivative(si, fpe.t) - rhs)) == 0


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_vp_vector_form_has_table3_terms_and_div_f_constant(dim):
    sde, fpe = S.derive("vp", dim)
    vf = S.vector_form(fpe)
    beta = sp.Function("beta")(sde.t)
    assert vf is not None
    assert sp.simplify(vf.c_div - beta / 2) == 0
    assert sp.simplify(vf.c_norm - beta / 2) == 0
    assert sp.simplify(vf.c_xs - beta / 2) == 0  # the <x, s> term
    assert sp.simplify(vf.c0 + S.divergence(sde.drift, sde.x)) == 0  # constant = -div f
    assert sp.simplify(vf.c0 - R(dim, 2) * beta) == 0


def test_ve_vector_form_has_no_drift_terms():
    sde, fpe = S.derive("ve", 2)
    vf = S.vector_form(fpe)
    assert vf.c_xs == 0 and vf.c0 == 0
    assert sp.simplify(vf.c_div - sde.g2 / 2) == 0


def test_general_drift_gives_the_generic_operator():
    """A nonlinear, anisotropic drift: L[s] = g^2/2 div s + g^2/2 |s|^2 - <f, s> - div f."""
    x, t = S.coordinates(2)
    f = (x[1] ** 2 * t, -x[0] * x[1] + sp.sin(x[0]))
    g2 = 1 + t**2
    fpe = S.derive_score_fpe(f, g2, x, t)
    s = fpe.s
    generic = (
        g2 / 2 * S.divergence(s, x)
        + g2 / 2 * (s[0] ** 2 + s[1] ** 2)
        - (f[0] * s[0] + f[1] * s[1])
        - S.divergence(f, x)
    )
    assert sp.expand(fpe.operator - generic) == 0
    assert S.vector_form(fpe) is None  # not of the isotropic linear form


def test_derivation_rejects_bad_input():
    x, t = S.coordinates(2)
    with pytest.raises(ValueError, match="components"):
        S.derive_score_fpe((x[0],), 1, x, t)
    with pytest.raises(ValueError, match="must not depend on x"):
        S.derive_score_fpe((0, 0), x[0] ** 2, x, t)


def test_derivation_for_all_dimensions_is_fast_and_gives_the_known_coefficients():
    # L[s] = c_div div s + c_norm |s|^2 + c_xs <x, s> + c0 for f = c(t) x (FP-Diffusion Table 3):
    # c_div = c_norm = g^2/2, c_xs = -c, c0 = -div f = -D c. VE: c = 0; VP: c = -beta/2,
    # g^2 = beta; sub-VP: c = -beta/2, g^2 = beta (1 - a^4) (kept as the function g(t)^2).
    t0 = time.perf_counter()
    derived = {}
    for name in S.SYMBOLIC_SDES:
        for dim in (1, 2, 3):
            sde = S.symbolic_sde(name, dim)
            fpe = S.derive_score_fpe(sde.drift, sde.g2, sde.x, sde.t)  # uncached
            derived[name, dim] = (sde, S.vector_form(fpe))
    assert time.perf_counter() - t0 < 20.0
    for (name, dim), (sde, vf) in derived.items():
        assert vf is not None, (name, dim)
        c = sp.S.Zero if name == "ve" else -sp.Function("beta")(sde.t) / 2
        want = (sde.g2 / 2, sde.g2 / 2, -c, -dim * c)
        got = (vf.c_div, vf.c_norm, vf.c_xs, vf.c0)
        assert all(sp.simplify(a - b) == 0 for a, b in zip(got, want)), (name, dim, got, want)


@pytest.mark.parametrize("cls", [VESDE, VPSDE, SubVPSDE])
def test_symbolic_sde_matches_torch_sde(cls):
    """Same parameterisation as scorefpe.sde: g^2, drift coefficient, a(t), v(t)."""
    name = {VESDE: "ve", VPSDE: "vp", SubVPSDE: "subvp"}[cls]
    sde = S.symbolic_sde(name, 1)
    tsde = cls()
    t = torch.linspace(1e-3, 1.0, 17, dtype=torch.float64)
    x1 = torch.ones(17, 1, dtype=torch.float64)
    pairs = [
        (sde.numeric(sde.g2), tsde.diffusion(t) ** 2),
        (sde.numeric(sde.drift[0] / sde.x[0]), tsde.drift(x1, t)[:, 0]),
        (sde.numeric(sde.mean_coeff), tsde.mean_coeff(t)),
        (sde.numeric(sde.marginal_var), tsde.marginal_var(t)),
    ]
    for expr, ref in pairs:
        fn = sp.lambdify(sde.t, expr, modules="numpy")
        got = np.broadcast_to(np.asarray(fn(t.numpy()), dtype=np.float64), (17,))
        # numpy evaluates v = 1 - a^2 without expm1: at t = 1e-3, 1 - a^2 ~ 1e-4, so it keeps
        # only ~12 of float64's 16 digits (sub-VP squares it: relative error ~2e-12).
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-11, atol=0)


# --------------------------------------------------------------------------------------------
# Closed-form scores satisfy the derived equation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ve", "vp"])
def test_1d_gaussian_satisfies_both_forms_symbolically(name):
    sde, fpe = S.derive(name, 1)
    mu, s0 = sp.Symbol("mu", real=True), sp.Symbol("s0", positive=True)
    log_q = S.gaussian_log_density(sde, [mu], [[s0**2]])
    assert S.is_zero(S.scalar_residual(fpe, sde, log_q))
    assert all(S.is_zero(e) for e in S.score_residual(fpe, sde, log_q))


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_2d_gaussian_full_covariance_satisfies_both_forms_symbolically(name):
    sde, fpe = S.derive(name, 2)
    m = sp.symbols("m1 m2", real=True)
    a, b, c = sp.symbols("a b c", real=True)  # any symmetric covariance: the identity is exact
    log_q = S.gaussian_log_density(sde, m, [[a, b], [b, c]])
    assert all(S.is_zero(e) for e in S.score_residual(fpe, sde, log_q))
    assert S.is_zero(S.scalar_residual(fpe, sde, log_q))


def test_wrong_sde_leaves_a_residual():
    """Control: the VP density does not satisfy the VE equation (the checks can fail)."""
    sde_vp, _ = S.derive("vp", 1)
    sde_ve, fpe_ve = S.derive("ve", 1)
    log_q = sde_vp.numeric(S.gaussian_log_density(sde_vp, [R(1, 2)], [[R(1, 4)]]))
    res = [sde_ve.numeric(e) for e in S.score_residual(fpe_ve, sde_ve, log_q)]
    pts = _rng_points(random.Random(1), 5, 1)
    assert S.max_abs_at_points(res, [*fpe_ve.x, fpe_ve.t], pts) > 1e-3


def _mixture_1d(sde):
    return S.lazy_mixture_density(
        sde, [R(3, 10), R(7, 10)], [[-1], [R(3, 2)]], [[[R(1, 4)]], [[R(1, 9)]]]
    )


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_1d_mixture_satisfies_both_forms_at_random_points(name):
    sde, fpe = S.derive(name, 1)
    args = [*fpe.x, fpe.t, *(p for p, _ in sde.params)]
    pts = [[*p, *(v for _, v in sde.params)] for p in _rng_points(random.Random(0), 40, 1)]
    lazy = _mixture_1d(sde)
    res = S.density_residuals(fpe, sde, lazy.density)
    assert S.max_abs_at_points(res, args, pts, coefficients=lazy.coefficients) < CLOSED_FORM_TOL
    # The same on the fully substituted closed form (no lazy coefficients), and the residual of
    # a wrong score (the mixture's weights swapped in s but not in d_t log q) is O(1).
    full = S.mixture_density(sde, [R(3, 10), R(7, 10)], [[-1], [R(3, 2)]],
                             [[[R(1, 4)]], [[R(1, 9)]]])  # fmt: skip
    res_full = S.density_residuals(fpe, sde, full)
    assert S.max_abs_at_points(res_full, args, pts) < CLOSED_FORM_TOL
    wrong = S.mixture_density(sde, [R(7, 10), R(3, 10)], [[-1], [R(3, 2)]],
                              [[[R(1, 4)]], [[R(1, 9)]]])  # fmt: skip
    mixed = sp.diff(sp.log(full), fpe.t) - S.apply_operator(
        fpe, sde, S.gradient(sp.log(wrong), fpe.x)
    )
    assert S.max_abs_at_points([mixed], args, pts) > 1e-2


def test_lazy_density_equals_closed_form():
    sde, fpe = S.derive("vp", 2)
    means = [[R(1, 2), -1], [0, R(3, 2)]]
    covs = [[[1, R(1, 3)], [R(1, 3), 2]], [[R(1, 2), 0], [0, 1]]]
    lazy = S.lazy_mixture_density(sde, [R(1, 4), R(3, 4)], means, covs)
    full = S.mixture_density(sde, [R(1, 4), R(3, 4)], means, covs)
    args = [*fpe.x, fpe.t, *(p for p, _ in sde.params)]
    pts = [[*p, *(v for _, v in sde.params)] for p in _rng_points(random.Random(2), 10, 2)]
    got = S.max_abs_at_points(
        [sp.log(lazy.density) - sp.log(full)], args, pts, coefficients=lazy.coefficients
    )
    assert got < CLOSED_FORM_TOL
    with pytest.raises(ValueError, match="closed form"):
        S.compile_mpmath([lazy.density], args)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_rotation_residual_is_nonzero_and_as_predicted(name):
    sde, fpe = S.derive(name, 2)
    w = sp.Symbol("w", real=True)
    log_q = S.gaussian_log_density(sde, [R(1, 2), -1], [[R(3, 2), R(1, 2)], [R(1, 2), 1]])
    score = S.gradient(log_q, fpe.x)
    field = [si + ri for si, ri in zip(score, S.rotation_field(fpe.x, w))]
    eps = S.apply_residual(fpe, sde, field)
    pred = S.predicted_rotation_residual(fpe, sde, score, w)
    assert all(S.is_zero(e - p) for e, p in zip(eps, pred))
    # Non-zero: at x = (1, 0), t = 1/2, w = 1 the residual has size O(g^2).
    point = {fpe.x[0]: 1, fpe.x[1]: 0, fpe.t: R(1, 2), w: 1}
    values = [abs(float(sde.numeric(e).subs(point).evalf(30))) for e in eps]
    assert max(values) > 1e-2


# --------------------------------------------------------------------------------------------
# Cross-check against the torch operators
# --------------------------------------------------------------------------------------------
_finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def _cross_case(draw):
    sde_name = draw(st.sampled_from(["vp", "ve"]))
    field = draw(st.sampled_from(list(V.CrossField)))
    if field is V.CrossField.GAUSSIAN_ROTATION:
        a = draw(st.floats(0.05, 3.0, **_finite))
        c = draw(st.floats(0.05, 3.0, **_finite))
        rho = draw(st.floats(-0.9, 0.9, **_finite))
        params = {
            "m1": draw(st.floats(-2, 2, **_finite)), "m2": draw(st.floats(-2, 2, **_finite)),
            "c11": a, "c12": rho * math.sqrt(a * c), "c22": c,
            "w": draw(st.floats(-1.0, 1.0, **_finite)),
        }  # fmt: skip
    else:
        params = {p: draw(st.floats(-2, 2, **_finite)) for p in ("p1", "p2", "p3")}
    n = draw(st.integers(1, 6))
    xs = draw(st.lists(st.tuples(st.floats(-4, 4, **_finite), st.floats(-4, 4, **_finite)),
                       min_size=n, max_size=n))  # fmt: skip
    ts = draw(st.lists(st.floats(1e-3, 1.0, **_finite), min_size=n, max_size=n))
    return sde_name, field, params, xs, ts


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cross_case())
def test_fp_residual_matches_symbolic_residual(case):
    """fp_residual (exact, float64) = lambdified symbolic eps to 1e-10 of the terms' size."""
    sde_name, field, params, xs, ts = case
    x = torch.tensor(xs, dtype=torch.float64)
    t = torch.tensor(ts, dtype=torch.float64)
    rel = V.compare_with_operators(sde_name, field, x, t, params)
    assert rel.shape == (len(xs),)
    assert float(rel.max()) < V.TORCH_REL_BOUND


def test_cross_check_detects_a_different_sde():
    """Control: the torch residual under other SDE parameters differs from the symbolic one."""
    lam = V.lambdified_residual("vp", V.CrossField.NONLINEAR)
    params = {"p1": 1.0, "p2": -0.5, "p3": 0.7}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    eps_sym, scale = lam.residual(x.numpy(), t.numpy(), params)
    eps_other = fp_residual(lam.score_fn(params), VPSDE(beta_max=19.0), x, t).numpy()
    assert float((np.abs(eps_other - eps_sym).max(-1) / scale).max()) > 1e-3
    with pytest.raises(ValueError, match="missing"):
        lam.score_fn({"p1": 1.0})


# --------------------------------------------------------------------------------------------
# The `scorefpe check` section and the CLI
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_symbolic_check_section_passes(name):
    rows = V.run_symbolic_checks(name, seed=3)
    assert len(rows) == 9
    assert all(r.section == "symbolic" for r in rows)
    failed = [(r.name, r.value, r.bound) for r in rows if not r.passed]
    assert not failed, failed


def test_derive_cli_latex_shows_table3_vp_terms():
    result = CliRunner().invoke(main, ["derive", "--sde", "vp", "--latex"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert (
        r"\frac{\beta(t)}{2} \left(\operatorname{div}_x s + \|s\|_2^2 + \langle x, s \rangle + 2\right)"
        in out
    )  # scalar form with the constant D/2 beta from div f, D = 2
    assert (
        r"\nabla_x \left[\frac{\beta(t)}{2} \left(\operatorname{div}_x s + \|s\|_2^2 + "
        r"\langle x, s \rangle\right)\right]" in out
    )  # the score form of FP-Diffusion Table 3
    assert r"-\operatorname{div}_x f &= \beta(t)" in out
    assert "simplifies to 0: yes" in out
    assert "derived and checked against FP-Diffusion Table 3 in" in out


def test_derive_cli_plain_text_and_dimension():
    result = CliRunner().invoke(main, ["derive", "--sde", "ve", "--dim", "3"])
    assert result.exit_code == 0, result.output
    assert "d_t log q = L[s] = g(t)**2/2*(div_x(s) + |s|^2)" in result.output
    assert "d_t s_3 =" in result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["derive", "--sde", "vp", "--dim", "4"], "4"),
        (["derive", "--sde", "vp", "--dim", "0"], "0"),
        (["derive", "--sde", "xx"], "xx"),
        (["derive", "--sde", "vp", "--dim", "two"], "two"),
    ],
)
def test_derive_cli_bad_input_exits_2(args, needle):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert needle in result.output
