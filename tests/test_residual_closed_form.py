"""The exact score-FPE residual of a field non-affine in x and non-linear in t, against sympy.

    eps[s] = d_t s - grad_x L[s],  L[s] = 1/2 g^2 div_x s + 1/2 g^2 |s|^2 - <f, s> - div_x f

On fields affine in x and linear in t, grad_x div_x s = 0 and d_t s is what any stencil gives,
so a wrong factor on the divergence term (g^2 div s for 1/2 g^2 div s) goes unseen. The field
below is a non-conservative D = 2 field built from sin, cos, exp and polynomials of x and t: its
grad div s, J^T s and d_t s are all non-zero. sympy differentiates it symbolically, with f and
g^2 written here from the papers (FP-Diffusion Table 3, Song et al. 2021), independently of
scorefpe.sde; the result is evaluated in float64 by numpy.

Tolerance: both sides are float64 sums of the five terms of eps, each rounded to a few ulps
after O(10) operations, so the error is a few eps_64 = 2.2e-16 times the sum of the terms'
magnitudes (measured: at most 1.1e-15 of it, VE, VP and sub-VP); we allow 1e-13 of that sum
(about 450 ulps). The dropped 1/2 changes eps by 1/2 g^2 grad div s, which the test checks is
> 1e5 times the tolerance at these points (it is 0.76-0.96 of the sum at the largest point).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

from scorefpe import SubVPSDE, VESDE, VPSDE, fp_operator, fp_residual

DT = torch.float64
RTOL = 1e-13


def _field(x1, x2, t, lib):
    """The test field, written once for sympy symbols and for torch tensors (lib: the module)."""
    s1 = lib.exp(-t) * lib.sin(x1) + t**2 * x2**2 / 4 - x1
    s2 = (1 + t**3) * lib.cos(x1 * x2) - t * x2**3 / 3 + lib.sin(2 * t) * x1
    return s1, s2


def _torch_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s1, s2 = _field(x[:, 0], x[:, 1], t, torch)
    return torch.stack([s1, s2], dim=1)


T = sp.Symbol("t", real=True)


def _sde_coefficients(name: str) -> tuple[sp.Expr, sp.Expr]:
    """(g(t)^2, c(t)) with f = c(t) x, for the default parameters of each SDE."""
    if name == "ve":
        smin, smax = sp.Rational(1, 100), sp.Integer(50)
        sigma = smin * (smax / smin) ** T
        return sigma**2 * 2 * sp.log(smax / smin), sp.Integer(0)
    bmin, bmax = sp.Rational(1, 10), sp.Integer(20)
    beta = bmin + T * (bmax - bmin)
    if name == "vp":
        return beta, -beta / 2
    # sub-VP: g^2 = beta (1 - exp(-2 int_0^t beta))
    int_beta = bmin * T + T**2 * (bmax - bmin) / 2
    return beta * (1 - sp.exp(-2 * int_beta)), -beta / 2


def _closed_form_terms(name: str, half: sp.Expr = sp.Rational(1, 2)):
    """numpy functions (x1, x2, t) -> the five terms of eps, each of shape (2, n):
    d_t s, -grad(half g^2 div s), -grad(1/2 g^2 |s|^2), +grad <f, s>, +grad div f."""
    x1, x2 = sp.symbols("x1 x2", real=True)
    s = sp.Matrix(_field(x1, x2, T, sp))
    g2, c = _sde_coefficients(name)
    xs = [x1, x2]
    div_s = sum(sp.diff(s[i], xs[i]) for i in range(2))
    f_dot_s = c * (x1 * s[0] + x2 * s[1])
    div_f = 2 * c
    parts = [
        [sp.diff(s[i], T) for i in range(2)],
        [-sp.diff(half * g2 * div_s, v) for v in xs],
        [-sp.diff(g2 * (s[0] ** 2 + s[1] ** 2) / 2, v) for v in xs],
        [sp.diff(f_dot_s, v) for v in xs],
        [sp.diff(div_f, v) for v in xs],
    ]
    return [sp.lambdify((x1, x2, T), p, modules="numpy") for p in parts]


def _evaluate(terms, x: torch.Tensor, t: torch.Tensor) -> list[np.ndarray]:
    a, b, tt = (v.numpy() for v in (x[:, 0], x[:, 1], t))
    ones = np.ones_like(a)
    # lambdify returns scalars for constant entries: broadcast every entry to (n,).
    return [np.stack([np.asarray(e) * ones for e in term(a, b, tt)], axis=1) for term in terms]


SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


def _points(seed: int, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(n, 2, generator=g, dtype=DT)
    # t spread over (0, 1], with the ends: VE's g^2 grows by 2.5e7 over [0, 1].
    t = torch.cat([torch.tensor([1e-3, 1.0], dtype=DT), torch.rand(n - 2, generator=g, dtype=DT)])
    return x, t


@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_residual_matches_sympy_on_a_nonlinear_field(name):
    sde = SDES[name]
    x, t = _points(17)
    terms = _evaluate(_closed_form_terms(name), x, t)
    expected = torch.from_numpy(sum(terms))
    scale = torch.from_numpy(sum(np.abs(p) for p in terms))
    got = fp_residual(_torch_field, sde, x, t)
    err = (got - expected).abs()
    assert float((err / scale).max()) <= RTOL, float((err / scale).max())
    # Non-vacuous: the divergence term is large here, so a factor 1 for 1/2 cannot hide.
    div_term = torch.from_numpy(terms[1]).abs()
    assert float((div_term / scale).max()) > 1e5 * RTOL
    assert float((div_term.norm(dim=1) / scale.norm(dim=1)).min()) > 1e-6


@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_residual_differs_from_the_one_without_the_half(name):
    # The sympy residual with g^2 div s (no 1/2) is far outside the tolerance of the test above:
    # the test above would fail for a residual computed that way.
    sde = SDES[name]
    x, t = _points(18)
    right = _evaluate(_closed_form_terms(name), x, t)
    wrong = _evaluate(_closed_form_terms(name, half=sp.Integer(1)), x, t)
    scale = sum(np.abs(p) for p in right)
    gap = np.abs(sum(wrong) - sum(right)) / scale
    assert gap.max() > 1e5 * RTOL
    got = fp_residual(_torch_field, sde, x, t).numpy()
    assert (np.abs(got - sum(wrong)) / scale).max() > 1e5 * RTOL


@pytest.mark.parametrize("name", sorted(SDES))
def test_fp_operator_matches_sympy(name):
    # L[s] itself (not only its gradient): catches a wrong constant term such as div f.
    sde = SDES[name]
    x1, x2 = sp.symbols("x1 x2", real=True)
    s = sp.Matrix(_field(x1, x2, T, sp))
    g2, c = _sde_coefficients(name)
    div_s = sp.diff(s[0], x1) + sp.diff(s[1], x2)
    parts = [g2 * div_s / 2, g2 * (s[0] ** 2 + s[1] ** 2) / 2, -c * (x1 * s[0] + x2 * s[1]), -2 * c]
    fns = [sp.lambdify((x1, x2, T), p, modules="numpy") for p in parts]
    x, t = _points(19)
    a, b, tt = (v.numpy() for v in (x[:, 0], x[:, 1], t))
    vals = [np.asarray(f(a, b, tt)) * np.ones_like(a) for f in fns]
    expected = torch.from_numpy(sum(vals))
    scale = torch.from_numpy(sum(np.abs(v) for v in vals))
    got = fp_operator(_torch_field, sde, x, t)
    assert float(((got - expected).abs() / scale).max()) <= RTOL
    assert math.isfinite(float(got.abs().max()))
