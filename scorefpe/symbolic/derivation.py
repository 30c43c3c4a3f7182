"""Symbolic derivation of the score Fokker-Planck equation (FP-Diffusion Prop. 3.1 and Table 3).

Starting from the Fokker-Planck equation of dx = f(x, t) dt + g(t) dw,

    d_t q = -div_x(f q) + 1/2 g^2 Lap_x q,

sympy substitutes q = exp(phi), divides by q and reads off

    d_t log q = L[s],   L[s] = 1/2 g^2 div_x s + 1/2 g^2 |s|^2 - <f, s> - div_x f   (scalar form)
    d_t s     = grad_x L[s]                                                        (score form)

with s = grad_x phi, in dimension D = 1, 2, 3 (any small D works). Nothing of L[s] is typed in:
the only typed formula is FP-Diffusion Table 3 (`table3_operator`), kept as the target the
derived operator is compared with. The module also builds the closed-form log-densities of
Gaussians and Gaussian mixtures perturbed by the linear SDEs of `scorefpe.sde`, with the same
parameterisation, so that the derived equation can be checked on exact scores.

Everything here is sympy; no derivative of a torch score is taken (that is `scorefpe.operators`).
Cost: deriving the equation for one SDE and D <= 3 takes well under a second; `derive` caches it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import mpmath
import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from scorefpe.sde import SDES, VEVariance

Expr = sp.Expr

MAX_DIM = 3
SYMBOLIC_SDES = ("ve", "vp", "subvp")


# --------------------------------------------------------------------------------------------
# Coordinates and fields
# --------------------------------------------------------------------------------------------
def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIM:
        raise ValueError(f"dimension must be an integer in 1..{MAX_DIM}, got {dim!r}")


def coordinates(dim: int) -> tuple[tuple[sp.Symbol, ...], sp.Symbol]:
    """The real coordinates (x_1, ..., x_D) and the time t (positive) as sympy symbols.

    Raises:
        ValueError: dim is not an integer in 1..3.
    """
    _check_dim(dim)
    x = sp.symbols(f"x_1:{dim + 1}", real=True)
    t = sp.Symbol("t", positive=True)
    return tuple(x), t


def vector_field(name: str, x: Sequence[sp.Symbol], t: sp.Symbol) -> tuple[Expr, ...]:
    """A generic symbolic vector field (name_1(x, t), ..., name_D(x, t)) of undefined functions."""
    return tuple(sp.Function(f"{name}_{i + 1}")(*x, t) for i in range(len(x)))


def divergence(field: Sequence[Expr], x: Sequence[sp.Symbol]) -> Expr:
    """div_x field = sum_i d field_i / d x_i."""
    return sp.Add(*[sp.diff(fi, xi) for fi, xi in zip(field, x)])


def gradient(expr: Expr, x: Sequence[sp.Symbol]) -> tuple[Expr, ...]:
    """grad_x expr."""
    return tuple(sp.diff(expr, xi) for xi in x)


def laplacian(expr: Expr, x: Sequence[sp.Symbol]) -> Expr:
    """Lap_x expr = sum_i d^2 expr / d x_i^2."""
    return sp.Add(*[sp.diff(expr, xi, 2) for xi in x])


# --------------------------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreFPE:
    """The score FPE derived from the Fokker-Planck equation of dx = f dt + g dw.

    x, t: the coordinates. drift: f(x, t) (D components). g2: g(t)^2.
    phi: the undefined function phi(x, t) = log q_t(x) used in the derivation.
    log_density_rhs: (-div(f q) + 1/2 g^2 Lap q) / q with q = exp(phi), in derivatives of phi,
        i.e. the right-hand side of d_t phi = ... before any s appears.
    s: the symbolic vector field s_i(x, t) that stands for grad_x phi.
    operator: L[s], obtained from log_density_rhs by d_i phi -> s_i, d_i^2 phi -> d_i s_i.
    score_rhs: grad_x L[s] (D components), the right-hand side of d_t s = grad_x L[s].
    residual: eps[s] = d_t s - grad_x L[s] (D components).
    """

    x: tuple[sp.Symbol, ...]
    t: sp.Symbol
    drift: tuple[Expr, ...]
    g2: Expr
    phi: Expr
    log_density_rhs: Expr
    s: tuple[Expr, ...]
    operator: Expr
    score_rhs: tuple[Expr, ...]
    residual: tuple[Expr, ...]

    @property
    def dim(self) -> int:
        """D, the number of coordinates."""
        return len(self.x)


def _phi_to_score(expr: Expr, phi: Expr, s: Sequence[Expr], x: Sequence[sp.Symbol]) -> Expr:
    """Rewrite derivatives of phi as derivatives of s = grad phi: d_i phi -> s_i, d_i d_j.. phi ->
    d_j.. s_i, with i the first x-variable of the derivative (for a gradient field any order gives
    the same function; for a generic field this is the convention L[s] is defined with:
    Lap phi -> div s)."""
    index = {xi: i for i, xi in enumerate(x)}

    def rewrite(d: sp.Derivative) -> Expr:
        variables = list(d.variables)
        first = next((v for v in variables if v in index), None)
        if first is None:
            raise ValueError(f"cannot express {d} through s = grad_x phi (no x-derivative)")
        variables.remove(first)
        si = s[index[first]]
        return sp.Derivative(si, *variables) if variables else si

    phi_derivs = {d: rewrite(d) for d in expr.atoms(sp.Derivative) if d.expr == phi}
    out = expr.xreplace(phi_derivs)
    if out.has(phi):
        raise ValueError(f"phi itself (not only its x-derivatives) remains in {out}")
    return out


def derive_score_fpe(
    drift: Sequence[Expr], g2: Expr, x: Sequence[sp.Symbol], t: sp.Symbol
) -> ScoreFPE:
    """Derive L[s] and the score FPE from d_t q = -div(f q) + 1/2 g^2 Lap q by q = exp(phi).

    drift: f(x, t), one sympy expression per coordinate (may contain undefined functions of t,
    such as beta(t)); g2: g(t)^2, free of x. The log-density form is d_t phi = RHS / q after
    cancelling exp(phi); the score form is its x-gradient (d_t d_i phi = d_i RHS / q), both
    rewritten in s = grad_x phi. Cost: symbolic differentiation, O(D^2) terms; milliseconds.

    Raises:
        ValueError: len(drift) != len(x), g2 depends on x, or the result cannot be written in s.
    """
    x = tuple(x)
    drift = tuple(sp.sympify(fi) for fi in drift)
    g2 = sp.sympify(g2)
    if len(drift) != len(x):
        raise ValueError(f"drift has {len(drift)} components for {len(x)} coordinates")
    if g2.free_symbols & set(x):
        raise ValueError(f"g(t)^2 must not depend on x, got {g2}")
    phi = sp.Function("phi")(*x, t)
    q = sp.exp(phi)
    fpe_rhs = -divergence([fi * q for fi in drift], x) + g2 / 2 * laplacian(q, x)
    # exp(phi) is a common factor of every term: dividing and expanding cancels it exactly.
    log_rhs = sp.expand(sp.powsimp(sp.expand(fpe_rhs / q)))
    if log_rhs.has(sp.exp(phi)):
        raise ValueError(f"exp(phi) did not cancel in {log_rhs}")
    s = vector_field("s", x, t)
    operator = sp.expand(_phi_to_score(log_rhs, phi, s, x))
    score_rhs = tuple(sp.expand(sp.diff(operator, xi)) for xi in x)
    residual = tuple(sp.Derivative(si, t) - ri for si, ri in zip(s, score_rhs))
    return ScoreFPE(x, t, drift, g2, phi, log_rhs, s, operator, score_rhs, residual)


# --------------------------------------------------------------------------------------------
# The SDEs of scorefpe.sde, symbolically
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SymbolicSDE:
    """A linear SDE of `scorefpe.sde` in sympy, with the same parameterisation.

    drift, g2: f(x, t) and g(t)^2 written with the named functions beta(t) and/or g(t), as in
        FP-Diffusion Table 3 (what `scorefpe derive` prints).
    definitions: (named function, its formula in t and the parameters) pairs.
    params: (parameter symbol, its value as an exact rational) pairs, the defaults of the
        corresponding `scorefpe.sde` dataclass unless overridden.
    mean_coeff, marginal_var: a(t) and v(t) of x(t) | x(0) ~ N(a x(0), v I), as formulas in t and
        the parameters (VE: the exact v = sigma^2 - sigma_min^2, as `VESDE.marginal_var`).
    """

    name: str
    x: tuple[sp.Symbol, ...]
    t: sp.Symbol
    drift: tuple[Expr, ...]
    g2: Expr
    definitions: tuple[tuple[Expr, Expr], ...]
    params: tuple[tuple[sp.Symbol, sp.Rational], ...]
    mean_coeff: Expr
    marginal_var: Expr

    @property
    def dim(self) -> int:
        """D, the number of coordinates."""
        return len(self.x)

    def expand_definitions(self, expr: Expr) -> Expr:
        """expr with beta(t), g(t) replaced by their formulas (parameters kept symbolic)."""
        return expr.subs(dict(self.definitions)).doit()

    def numeric(self, expr: Expr) -> Expr:
        """expr with the definitions expanded and the parameters replaced by their values."""
        return self.expand_definitions(expr).subs(dict(self.params))

    def with_values(self) -> SymbolicSDE:
        """The same SDE with its parameters replaced by their values everywhere (params = ()).

        Expressions built from it (closed-form densities, residuals) carry numbers instead of
        beta_min, beta_max / sigma_min, sigma_max, which keeps them much smaller.
        """
        values = dict(self.params)
        return SymbolicSDE(
            name=self.name, x=self.x, t=self.t, drift=self.drift, g2=self.g2,
            definitions=tuple((k, v.subs(values)) for k, v in self.definitions),
            params=(),
            mean_coeff=sp.sympify(self.mean_coeff).subs(values),
            marginal_var=sp.sympify(self.marginal_var).subs(values),
        )  # fmt: skip


def _rational(value: float) -> sp.Rational:
    # Decimal reading of the float: 0.1 -> 1/10, the value the user typed, not its binary double.
    return sp.Rational(repr(float(value)))


def symbolic_sde(name: str, dim: int, **params: float) -> SymbolicSDE:
    """The VE, VP or sub-VP SDE of `scorefpe.sde` in sympy, in dimension dim.

    VE: f = 0, g(t) = sigma_min (sigma_max/sigma_min)^t sqrt(2 log(sigma_max/sigma_min)), a = 1,
        v = sigma(t)^2 - sigma_min^2 (or sigma(t)^2 with variance='song', `VEVariance`).
    VP: f = -1/2 beta(t) x, g^2 = beta(t) = beta_min + t (beta_max - beta_min),
        a = exp(-t^2 (beta_max - beta_min)/4 - t beta_min/2), v = 1 - a^2.
    sub-VP: as VP with g^2 = beta(t) (1 - a(t)^4), v = (1 - a^2)^2.
    params override the dataclass defaults (sigma_min/sigma_max or beta_min/beta_max).

    Raises:
        ValueError: unknown name (lists the valid ones), bad dim, unknown or invalid parameter.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in SYMBOLIC_SDES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {list(SYMBOLIC_SDES)}")
    x, t = coordinates(dim)
    valid = [f.name for f in fields(SDES[key]) if f.name != "T"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for SDE {key!r}; valid: {valid}")
    sde = SDES[key](**params)  # validates the values (ValueError) exactly as the torch SDE does
    # Numeric parameters become rationals; the VE variance convention is a choice, not a number.
    values = {p: _rational(getattr(sde, p)) for p in valid if p != "variance"}
    if key == "ve":
        smin, smax = sp.symbols("sigma_min sigma_max", positive=True)
        g = sp.Function("g")(t)
        sigma = smin * (smax / smin) ** t
        return SymbolicSDE(
            name=key, x=x, t=t,
            drift=tuple(sp.S.Zero for _ in x),
            g2=g**2,
            definitions=((g, sigma * sp.sqrt(2 * sp.log(smax / smin))),),
            params=((smin, values["sigma_min"]), (smax, values["sigma_max"])),
            mean_coeff=sp.S.One,
            marginal_var=sigma**2 if sde.variance is VEVariance.SONG else sigma**2 - smin**2,
        )  # fmt: skip
    bmin, bmax = sp.symbols("beta_min beta_max", positive=True)
    beta = sp.Function("beta")(t)
    beta_formula = bmin + t * (bmax - bmin)
    a = sp.exp(-(t**2) * (bmax - bmin) / 4 - t * bmin / 2)
    drift = tuple(-beta / 2 * xi for xi in x)
    params_ = ((bmin, values["beta_min"]), (bmax, values["beta_max"]))
    if key == "vp":
        return SymbolicSDE(key, x, t, drift, beta, ((beta, beta_formula),), params_, a, 1 - a**2)
    g = sp.Function("g")(t)
    g_formula = sp.sqrt(beta_formula * (1 - a**4))
    return SymbolicSDE(
        key, x, t, drift, g**2, ((beta, beta_formula), (g, g_formula)), params_, a, (1 - a**2) ** 2
    )


@functools.lru_cache(maxsize=32)
def derive(name: str, dim: int) -> tuple[SymbolicSDE, ScoreFPE]:
    """The symbolic SDE `name` ('ve', 'vp', 'subvp'; default parameters) in dimension dim and
    its derived score FPE (`derive_score_fpe`). Cached: the first call per (name, dim) derives.

    Raises:
        ValueError: unknown name or dim outside 1..3.
    """
    sde = symbolic_sde(name, dim)
    return sde, derive_score_fpe(sde.drift, sde.g2, sde.x, sde.t)


def table3_operator(sde: SymbolicSDE, s: Sequence[Expr]) -> Expr:
    """L[s] as FP-Diffusion Table 3 writes it, typed in (the comparison target, not derived).

    VE: 1/2 g^2 div s + 1/2 g^2 |s|^2.  VP: 1/2 beta (div s + |s|^2 + <x, s>) + D/2 beta, where
    D/2 beta = -div f is the constant of the scalar form (the table shows the score form, whose
    gradient removes it). sub-VP: 1/2 g^2 (div s + |s|^2) + 1/2 beta (<x, s> + D).

    Raises:
        ValueError: unknown SDE name.
    """
    x = sde.x
    div_s = divergence(s, x)
    norm2 = sp.Add(*[si**2 for si in s])
    x_dot_s = sp.Add(*[xi * si for xi, si in zip(x, s)])
    dim = len(x)
    if sde.name == "ve":
        g2 = sp.Function("g")(sde.t) ** 2
        return g2 / 2 * div_s + g2 / 2 * norm2
    beta = sp.Function("beta")(sde.t)
    if sde.name == "vp":
        return beta / 2 * (div_s + norm2 + x_dot_s) + sp.Rational(dim, 2) * beta
    if sde.name == "subvp":
        g2 = sp.Function("g")(sde.t) ** 2
        return g2 / 2 * (div_s + norm2) + beta / 2 * (x_dot_s + dim)
    raise ValueError(f"unknown SDE {sde.name!r}; choose one of {list(SYMBOLIC_SDES)}")


# --------------------------------------------------------------------------------------------
# Vector notation: recognise div s, |s|^2, <x, s> in the derived component expression
# --------------------------------------------------------------------------------------------
DIV_S = sp.Symbol("DIV_S")  # placeholder for div_x s
NORM2_S = sp.Symbol("NORM2_S")  # placeholder for |s|^2
X_DOT_S = sp.Symbol("X_DOT_S")  # placeholder for <x, s>


@dataclass(frozen=True)
class VectorForm:
    """L[s] = c_div div_x s + c_norm |s|^2 + c_xs <x, s> + c0, read off the derived L[s].

    The coefficients are functions of t only; `expr` is the same with the placeholders DIV_S,
    NORM2_S, X_DOT_S standing for div_x s, |s|^2, <x, s>.
    """

    c_div: Expr
    c_norm: Expr
    c_xs: Expr
    c0: Expr

    @property
    def expr(self) -> Expr:
        """c_div DIV_S + c_norm NORM2_S + c_xs X_DOT_S + c0 (placeholders for the s terms)."""
        return self.c_div * DIV_S + self.c_norm * NORM2_S + self.c_xs * X_DOT_S + self.c0

    @property
    def gradient_part(self) -> Expr:
        """The part of L[s] that grad_x acts on (c0 depends on t only, so grad_x c0 = 0)."""
        return self.c_div * DIV_S + self.c_norm * NORM2_S + self.c_xs * X_DOT_S


def vector_form(fpe: ScoreFPE) -> VectorForm | None:
    """Write the derived L[s] in vector notation if it has the isotropic form of the linear SDEs.

    The coefficients are read off the component expression (coefficient of d_i s_i, of s_i^2,
    of s_i / x_i, and the rest) and the reconstruction is verified to equal L[s] exactly, so
    the vector form is a rewriting of the derived result, not an assumption. Returns None when
    L[s] is not of that form (e.g. an anisotropic drift).
    """
    x, s, L = fpe.x, fpe.s, fpe.operator
    S = sp.symbols(f"S_1:{len(x) + 1}")
    dS = sp.symbols(f"dS_1:{len(x) + 1}")
    poly = L.xreplace({sp.Derivative(si, xi): di for si, xi, di in zip(s, x, dS)})
    poly = sp.expand(poly.xreplace(dict(zip(s, S))))
    if poly.has(*s):
        return None
    zero = {v: 0 for v in (*S, *dS)}
    c_div = {sp.simplify(sp.diff(poly, d)) for d in dS}
    c_norm = {sp.simplify(sp.diff(poly, v, 2) / 2) for v in S}
    c_xs = {sp.simplify(sp.diff(poly, v).subs(zero) / xi) for v, xi in zip(S, x)}
    if any(len(c) != 1 for c in (c_div, c_norm, c_xs)):
        return None
    (cd,), (cn,), (cx,) = c_div, c_norm, c_xs
    if any(c.free_symbols & set(x) or c.has(*S, *dS) for c in (cd, cn, cx)):
        return None
    rest = sp.expand(
        poly - cd * sum(dS) - cn * sum(v**2 for v in S) - cx * sum(v * xi for v, xi in zip(S, x))
    )
    if rest.has(*S, *dS) or rest.free_symbols & set(x):
        return None
    return VectorForm(cd, cn, cx, sp.factor(rest))


# --------------------------------------------------------------------------------------------
# Applying the derived equation to concrete fields
# --------------------------------------------------------------------------------------------
def _substitute_field(
    exprs: Sequence[Expr], s: Sequence[Expr], field: Sequence[Expr]
) -> tuple[Expr, ...]:
    """exprs with s_i(x, t) -> field_i and each derivative of s_i -> that derivative of field_i
    (s: undefined functions such as the s_i of `ScoreFPE`; field: expressions).

    Built as one xreplace of the atoms rather than subs + doit: much faster on the large
    expressions of mixtures, and it differentiates each field component only where needed.
    """
    if len(field) != len(s):
        raise ValueError(f"field has {len(field)} components, the equation has {len(s)}")
    comp = dict(zip(s, (sp.sympify(fi) for fi in field)))
    memo: dict[tuple[Expr, tuple[sp.Symbol, ...]], Expr] = {}

    def deriv(si: Expr, variables: tuple[sp.Symbol, ...]) -> Expr:
        # One variable at a time, reusing lower orders: sympy's diff(e, x, x) goes through
        # factor_terms, which is slow on the large expressions of mixtures.
        if not variables:
            return comp[si]
        key = (si, variables)
        if key not in memo:
            memo[key] = sp.diff(deriv(si, variables[:-1]), variables[-1])
        return memo[key]

    out = []
    for expr in exprs:
        repl = {
            d: deriv(d.expr, tuple(d.variables))
            for d in expr.atoms(sp.Derivative)
            if d.expr in comp
        }
        # Derivatives first: once s_i is replaced inside them they no longer match.
        out.append(expr.xreplace(repl).xreplace(comp))
    return tuple(out)


def apply_operator(fpe: ScoreFPE, sde: SymbolicSDE, field: Sequence[Expr]) -> Expr:
    """L[field] with beta(t), g(t) expanded (parameters kept symbolic).

    Raises:
        ValueError: field has the wrong number of components.
    """
    return _substitute_field([sde.expand_definitions(fpe.operator)], fpe.s, field)[0]


def apply_residual(fpe: ScoreFPE, sde: SymbolicSDE, field: Sequence[Expr]) -> tuple[Expr, ...]:
    """eps[field] = d_t field - grad_x L[field] (D components), definitions expanded.

    Raises:
        ValueError: field has the wrong number of components.
    """
    return _substitute_field([sde.expand_definitions(r) for r in fpe.residual], fpe.s, field)


def density_residuals(fpe: ScoreFPE, sde: SymbolicSDE, density: Expr) -> tuple[Expr, ...]:
    """(d_t log q - L[s], eps_1[s], ..., eps_D[s]) for s = grad_x log q, q a closed-form density.

    Built for an undefined q = Q(x, t) first (a short expression in Q and its derivatives),
    then each derivative of Q is replaced by that derivative of `density`. The result is the
    same function as `scalar_residual` / `score_residual` of log(density), but it is built in a
    fraction of the time for mixtures and its repeated subexpressions suit
    lambdify(..., cse=True).
    """
    big_q = sp.Function("Q")(*fpe.x, fpe.t)
    log_q = sp.log(big_q)
    exprs = [scalar_residual(fpe, sde, log_q), *score_residual(fpe, sde, log_q)]
    return _substitute_field(exprs, [big_q], [density])


def scalar_residual(fpe: ScoreFPE, sde: SymbolicSDE, log_q: Expr) -> Expr:
    """d_t log q - L[grad_x log q]: zero when log q solves the Fokker-Planck equation."""
    return sp.diff(log_q, fpe.t) - apply_operator(fpe, sde, gradient(log_q, fpe.x))


def score_residual(fpe: ScoreFPE, sde: SymbolicSDE, log_q: Expr) -> tuple[Expr, ...]:
    """eps[grad_x log q] = d_t s - grad_x L[s] with s = grad_x log q (D components)."""
    return apply_residual(fpe, sde, gradient(log_q, fpe.x))


# --------------------------------------------------------------------------------------------
# Closed-form perturbed densities
# --------------------------------------------------------------------------------------------
def _as_matrix(value: object, dim: int, what: str) -> sp.Matrix:
    m = sp.Matrix(value) if not isinstance(value, sp.MatrixBase) else value
    if m.shape == (dim * dim, 1) or m.shape == (1, dim * dim):
        m = m.reshape(dim, dim)
    if what == "mean":
        m = m.reshape(dim, 1) if len(m) == dim else m
        if m.shape != (dim, 1):
            raise ValueError(f"mean must have {dim} entries, got shape {m.shape}")
    elif m.shape != (dim, dim):
        raise ValueError(f"covariance must be {dim}x{dim}, got shape {m.shape}")
    return m


def gaussian_log_density(sde: SymbolicSDE, mean: object, cov: object) -> Expr:
    """log q_t(x) for q_0 = N(mean, cov) perturbed by the SDE: N(a mean, a^2 cov + v I).

    mean: D entries; cov: D x D (sympy symbols or numbers; a symmetric matrix). The parameters of
    the SDE stay symbolic; use sde.numeric(...) to insert their values.

    Raises:
        ValueError: wrong shapes.
    """
    dim = sde.dim
    mu = _as_matrix(mean, dim, "mean")
    cov = _as_matrix(cov, dim, "cov")
    a, v = sde.mean_coeff, sde.marginal_var
    c = a**2 * cov + v * sp.eye(dim)
    d = sp.Matrix(sde.x) - a * mu
    quad = (d.T * c.adjugate() * d)[0, 0] / c.det()
    return -quad / 2 - sp.log(c.det()) / 2 - sp.Rational(dim, 2) * sp.log(2 * sp.pi)


def _check_mixture_lengths(
    weights: Sequence[object], means: Sequence[object], covs: Sequence[object]
) -> None:
    if not (len(weights) == len(means) == len(covs)) or not weights:
        raise ValueError(
            f"weights, means, covs must have the same non-zero length, got "
            f"{len(weights)}, {len(means)}, {len(covs)}"
        )


def mixture_log_density(
    sde: SymbolicSDE, weights: Sequence[object], means: Sequence[object], covs: Sequence[object]
) -> Expr:
    """log q_t(x) for q_0 = sum_k w_k N(mean_k, cov_k) perturbed by the SDE.

    Raises:
        ValueError: lengths differ or shapes are wrong.
    """
    return sp.log(mixture_density(sde, weights, means, covs))


def mixture_density(
    sde: SymbolicSDE, weights: Sequence[object], means: Sequence[object], covs: Sequence[object]
) -> Expr:
    """q_t(x) = sum_k w_k N(x; a mean_k, a^2 cov_k + v I) (see `mixture_log_density`).

    Raises:
        ValueError: lengths differ or shapes are wrong.
    """
    _check_mixture_lengths(weights, means, covs)
    return sp.Add(*[
        sp.sympify(w) * sp.exp(gaussian_log_density(sde, m, c))
        for w, m, c in zip(weights, means, covs)
    ])  # fmt: skip


@dataclass(frozen=True)
class LazyDensity:
    """A closed-form density whose time-dependent coefficients are undefined functions of t.

    density: q_t(x) = sum_k w_k exp(-1/2 (x - mu_k)^T P_k (x - mu_k) + n_k), where the entries
        of the precision P_k(t), of the mean mu_k(t) and the normaliser n_k(t) are undefined
        functions of t (x-derivatives of it stay small).
    coefficients: (undefined function, its closed form in t and the parameters) pairs:
        P_k = (a^2 cov_k + v I)^-1, mu_k = a mean_k, n_k = -1/2 log det(2 pi (a^2 cov_k + v I)).
    `compile_mpmath(..., coefficients=...)` evaluates expressions built from `density` by first
    evaluating the coefficients (and their t-derivatives) from their closed forms. Substituting
    them symbolically gives exactly `mixture_density`.
    """

    density: Expr
    coefficients: tuple[tuple[Expr, Expr], ...]


def lazy_mixture_density(
    sde: SymbolicSDE,
    weights: Sequence[object],
    means: Sequence[object],
    covs: Sequence[object],
) -> LazyDensity:
    """`mixture_density` with its time-dependent coefficients left as undefined functions of t.

    Raises:
        ValueError: lengths differ or shapes are wrong.
    """
    _check_mixture_lengths(weights, means, covs)
    dim, x, t = sde.dim, sde.x, sde.t
    a, v = sde.mean_coeff, sde.marginal_var
    terms: list[Expr] = []
    coefficients: list[tuple[Expr, Expr]] = []
    for k, (w, mean, cov) in enumerate(zip(weights, means, covs)):
        mu0 = _as_matrix(mean, dim, "mean")
        c = a**2 * _as_matrix(cov, dim, "cov") + v * sp.eye(dim)
        det = c.det()
        precision = c.adjugate() / det
        p_fn = {}
        for i in range(dim):
            for j in range(i, dim):
                p_fn[i, j] = p_fn[j, i] = sp.Function(f"P{k}_{i + 1}{j + 1}")(t)
                coefficients.append((p_fn[i, j], precision[i, j]))
        mu_fn = [sp.Function(f"mu{k}_{i + 1}")(t) for i in range(dim)]
        coefficients += [(mu_fn[i], a * mu0[i]) for i in range(dim)]
        n_fn = sp.Function(f"n{k}")(t)
        coefficients.append((n_fn, -sp.log(det) / 2 - sp.Rational(dim, 2) * sp.log(2 * sp.pi)))
        d = [x[i] - mu_fn[i] for i in range(dim)]
        quad = sp.Add(*[p_fn[i, j] * d[i] * d[j] for i in range(dim) for j in range(dim)])
        terms.append(sp.sympify(w) * sp.exp(-quad / 2 + n_fn))
    return LazyDensity(sp.Add(*terms), tuple(coefficients))


def rotation_field(x: Sequence[sp.Symbol], strength: Expr) -> tuple[Expr, ...]:
    """strength * R x with R the rotation generator in the (x_1, x_2) plane (zero in other
    coordinates): a divergence-free field that is not a gradient (curl = 2 strength).

    Raises:
        ValueError: fewer than two coordinates.
    """
    if len(x) < 2:
        raise ValueError(f"a rotation needs at least 2 coordinates, got {len(x)}")
    return (-strength * x[1], strength * x[0], *[sp.S.Zero] * (len(x) - 2))


def predicted_rotation_residual(
    fpe: ScoreFPE, sde: SymbolicSDE, score: Sequence[Expr], strength: Expr
) -> tuple[Expr, ...]:
    """eps[s + r] predicted for a true score s and r = strength R x (`rotation_field`), strength
    constant in x and t, for the isotropic linear drift f = k(t) x of the SDEs here.

    Since eps[s] = 0, d_t r = 0, div r = 0 and <f, r> = k <x, R x> = 0,
        eps[s + r] = -grad_x(g^2 <s, r> + 1/2 g^2 |r|^2)
                   = -g^2 (J_s^T r + strength R^T s) - g^2 strength^2 x_(1,2),
    with x_(1,2) the (x_1, x_2) part of x. This is the hand computation the symbolic residual
    of the perturbed field must reproduce.
    """
    x = fpe.x
    g2 = sde.expand_definitions(sde.g2)
    r = rotation_field(x, strength)
    jac = sp.Matrix([[sp.diff(si, xj) for xj in x] for si in score])  # J_ij = d_j s_i
    rt_s = [strength * score[1], -strength * score[0], *[sp.S.Zero] * (len(x) - 2)]  # R^T s
    jt_r = jac.T * sp.Matrix(r)
    plane = [x[0], x[1], *[sp.S.Zero] * (len(x) - 2)]
    return tuple(
        -g2 * (jt_r[i] + rt_s[i]) - g2 * strength**2 * plane[i] for i in range(len(x))
    )


# --------------------------------------------------------------------------------------------
# High-precision evaluation
# --------------------------------------------------------------------------------------------
def compile_mpmath(
    exprs: Sequence[Expr],
    symbols: Sequence[sp.Symbol],
    coefficients: Sequence[tuple[Expr, Expr]] = (),
) -> Callable[..., list]:
    """fn(*values) -> [expr(values) for expr in exprs] as mpmath numbers (at the caller's dps).

    coefficients: (undefined function of t, closed form) pairs, as in `LazyDensity`. Each
    coefficient and each of its t-derivatives that occurs in exprs is evaluated first from the
    closed form (differentiated symbolically), then exprs with those values: the same numbers
    as substituting the closed forms, without building the much larger substituted expression.
    values are for `symbols`, which must include every free symbol of the closed forms.
    """
    closed = dict(coefficients)
    atoms: set[Expr] = set()
    for e in exprs:
        atoms |= {d for d in e.atoms(sp.Derivative) if d.expr in closed}
        atoms |= {f for f in e.atoms(AppliedUndef) if f in closed}
    atoms_l = sorted(atoms, key=sp.default_sort_key)
    dummies = [sp.Dummy(f"c{i}") for i in range(len(atoms_l))]
    derivs = {a: d for a, d in zip(atoms_l, dummies) if isinstance(a, sp.Derivative)}
    plain = {a: d for a, d in zip(atoms_l, dummies) if not isinstance(a, sp.Derivative)}
    # Derivatives first: they contain the plain function applications.
    outer = [sp.sympify(e).xreplace(derivs).xreplace(plain) for e in exprs]
    left = set().union(*[e.atoms(AppliedUndef) for e in outer]) if outer else set()
    if left:
        raise ValueError(f"undefined functions without a closed form: {sorted(map(str, left))}")
    inner = [
        sp.diff(closed[a.expr], *a.variables) if isinstance(a, sp.Derivative) else closed[a]
        for a in atoms_l
    ]
    syms = list(symbols)
    f_inner = sp.lambdify(syms, inner, modules="mpmath", cse=True)
    f_outer = sp.lambdify([*syms, *dummies], outer, modules="mpmath", cse=True)

    def fn(*values: object) -> list:
        return list(f_outer(*values, *f_inner(*values)))

    return fn


def _mpf(value: object) -> mpmath.mpf:
    q = sp.Rational(value)
    return mpmath.mpf(q.p) / q.q


def max_abs_at_points(
    exprs: Sequence[Expr],
    symbols: Sequence[sp.Symbol],
    points: Sequence[Sequence[object]],
    *,
    coefficients: Sequence[tuple[Expr, Expr]] = (),
    dps: int = 50,
) -> float:
    """max over points and expressions of |expr(point)|, evaluated with mpmath at dps digits.

    points: exact values (e.g. sympy Rationals) for the symbols, one row per point.
    coefficients: see `compile_mpmath`. Round-off is about 10^-dps times the size of the
    largest intermediate term, so with dps = 50 a value above 1e-12 means the expression is not
    zero there.
    """
    fn = compile_mpmath(exprs, symbols, coefficients)
    worst = mpmath.mpf(0)
    with mpmath.workdps(dps):
        for p in points:
            for value in fn(*[_mpf(v) for v in p]):
                worst = max(worst, abs(mpmath.mpmathify(value)))
    return float(worst)


def is_zero(expr: Expr) -> bool:
    """True when sympy reduces expr to exactly 0 (a proof; False is no disproof).

    First a cheap normal form: split exponentials and powers (exp(a + b) -> exp(a) exp(b)),
    recombine, and cancel the resulting rational function, which is exact and decides the
    Gaussian residuals here in about a second. sp.simplify is the fallback; it is much slower on
    these expressions and, with numeric SDE parameters (5000**t), can fail to find 0.
    """
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    if sp.cancel(sp.together(sp.powsimp(sp.expand_power_exp(expr)))) == 0:
        return True
    return sp.simplify(expr) == 0


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------
def _field_name(expr: Expr) -> str | None:
    if isinstance(expr, AppliedUndef):
        name = expr.func.__name__
        if name.startswith(("s_", "phi")):
            return name
    return None


class _TextPrinter(StrPrinter):
    def _print_Function(self, expr):  # noqa: N802 - sympy printer API
        name = _field_name(expr)
        if name is not None:
            return name
        if isinstance(expr, AppliedUndef) and expr.args == (sp.Symbol("t", positive=True),):
            return f"{expr.func.__name__}(t)"
        return super()._print_Function(expr)

    def _print_Derivative(self, expr):  # noqa: N802
        name = _field_name(expr.expr)
        if name is None:
            return super()._print_Derivative(expr)
        order = sum(n for _, n in expr.variable_count)
        den = " ".join(
            f"d{v.name}" if n == 1 else f"d{v.name}^{n}" for v, n in expr.variable_count
        )
        top = "d" if order == 1 else f"d^{order}"
        return f"({top}{name}/{den})"

    def _print_Symbol(self, expr):  # noqa: N802
        return {"DIV_S": "div_x(s)", "NORM2_S": "|s|^2", "X_DOT_S": "<x, s>"}.get(
            expr.name, super()._print_Symbol(expr)
        )


class _LatexPrinter(LatexPrinter):
    def _print_Function(self, expr, exp=None):  # noqa: N802
        name = _field_name(expr)
        if name is not None:
            body = self._print(sp.Symbol(name))
            return body if exp is None else f"{body}^{{{exp}}}"
        if isinstance(expr, AppliedUndef) and len(expr.args) == 1:
            body = rf"{self._print(sp.Symbol(expr.func.__name__))}(t)"
            return body if exp is None else rf"{body}^{{{exp}}}"
        return super()._print_Function(expr, exp)

    def _print_Derivative(self, expr):  # noqa: N802
        name = _field_name(expr.expr)
        if name is None:
            return super()._print_Derivative(expr)
        parts = [
            rf"\partial_{{{self._print(v)}}}" + ("" if n == 1 else f"^{{{n}}}")
            for v, n in expr.variable_count
        ]
        return " ".join(parts) + " " + self._print(sp.Symbol(name))

    def _print_Symbol(self, expr, style="plain"):  # noqa: N802
        special = {
            "DIV_S": r"\operatorname{div}_x s",
            "NORM2_S": r"\|s\|_2^2",
            "X_DOT_S": r"\langle x, s \rangle",
        }
        if expr.name in special:
            return special[expr.name]
        return super()._print_Symbol(expr, style)


def to_text(expr: Expr) -> str:
    """expr as plain text, with s_i for s_i(x, t) and d_x1 s_1 for its derivatives."""
    return _TextPrinter().doprint(expr)


def to_latex(expr: Expr) -> str:
    """expr as LaTeX, with s_i for s_i(x, t), \\partial_{x_1} s_1 for derivatives, and
    div_x s, ||s||^2, <x, s> for the vector-form placeholders."""
    return _LatexPrinter().doprint(expr)


# --------------------------------------------------------------------------------------------
# The derivation as a report (what `scorefpe derive` prints)
# --------------------------------------------------------------------------------------------
def grouped_terms(vf: VectorForm, *, with_constant: bool) -> list[tuple[Expr, Expr]]:
    """Group c_div div s + c_norm |s|^2 + c_xs <x, s> (+ c0) by shared coefficient.

    Returns (coefficient, inner) pairs whose sum of products is the vector form: a term joins a
    group when its coefficient is a rational multiple of the group's (so VP gives one group
    beta/2 (div s + |s|^2 + <x, s> + D), as in FP-Diffusion Table 3).
    """
    terms = [(vf.c_div, DIV_S), (vf.c_norm, NORM2_S), (vf.c_xs, X_DOT_S)]
    if with_constant:
        terms.append((vf.c0, sp.S.One))
    groups: list[tuple[Expr, Expr]] = []
    for coef, term in terms:
        if coef == 0:
            continue
        for k, (gcoef, inner) in enumerate(groups):
            ratio = sp.simplify(coef / gcoef)
            if ratio.is_Rational:
                groups[k] = (gcoef, inner + ratio * term)
                break
        else:
            groups.append((coef, term))
    return groups


def _render_groups(groups: list[tuple[Expr, Expr]], latex: bool) -> str:
    if not groups:
        return "0"
    show = to_latex if latex else to_text
    parts = []
    for coef, inner in groups:
        if isinstance(inner, sp.Add):
            inner_s = rf"\left({show(inner)}\right)" if latex else f"({show(inner)})"
            parts.append(f"{show(coef)} {inner_s}" if latex else f"{show(coef)}*{inner_s}")
        else:
            parts.append(show(coef * inner))
    return " + ".join(parts)


def render_derivation(sde: SymbolicSDE, fpe: ScoreFPE, *, latex: bool = False) -> str:
    """The derivation of `fpe` for `sde` as plain text or a LaTeX align* block.

    Lines: the SDE (f, g^2, definitions, parameter values), the Fokker-Planck equation divided
    by q = exp(phi), -div_x f, the scalar form d_t log q = L[s] (vector notation when
    `vector_form` recognises it, and the components), the score form d_t s = grad_x L[s]
    (vector notation and components), and whether L[s] equals FP-Diffusion Table 3's form.
    """
    show = to_latex if latex else to_text
    x, dim = fpe.x, fpe.dim
    neg_div_f = sp.factor(-divergence(fpe.drift, x))
    vf = vector_form(fpe)
    table3 = is_zero(fpe.operator - table3_operator(sde, fpe.s))
    defs = [(show(k), show(v)) for k, v in sde.definitions]
    params = ", ".join(f"{show(p)} = {show(v)}" for p, v in sde.params)
    # g(t)^2 is worth a line only when it is not just the square of a defined g(t).
    if any(fpe.g2 == k**2 for k, _ in sde.definitions):
        g2_line = ""
    elif latex:
        g2_line = rf", \quad g(t)^2 = {show(fpe.g2)}"
    else:
        g2_line = f",  g(t)^2 = {show(fpe.g2)}"
    if latex:
        drift = r"\left(" + ", ".join(show(fi) for fi in fpe.drift) + r"\right)"
        lines = [
            rf"% score FPE of the {sde.name.upper()} SDE in D = {dim}, derived with sympy",
            r"\begin{align*}",
            rf"f(x, t) &= {drift}{g2_line} \\",
            *[rf"{k} &= {v} \\" for k, v in defs],
            rf"& {params} \\",
            r"\partial_t q &= -\operatorname{div}_x(f q) + \tfrac{1}{2} g^2 \Delta_x q,"
            r" \quad q = e^{\phi}: \\",
            rf"\partial_t \phi &= {show(fpe.log_density_rhs)} \\",
            rf"-\operatorname{{div}}_x f &= {show(neg_div_f)} \\",
        ]
        if vf is not None:
            scalar = _render_groups(grouped_terms(vf, with_constant=True), True)
            score = _render_groups(grouped_terms(vf, with_constant=False), True)
            lines.append(rf"\partial_t \log q_t = L[s] &= {scalar} \\")
            lines.append(rf"&= {show(fpe.operator)} \\")
            lines.append(rf"\partial_t s &= \nabla_x \left[{score}\right] \\")
        else:
            lines.append(rf"\partial_t \log q_t = L[s] &= {show(fpe.operator)} \\")
        comps = [rf"\partial_t {show(si)} &= {show(ri)}" for si, ri in zip(fpe.s, fpe.score_rhs)]
        lines.append(" \\\\\n".join(comps))
        lines.append(r"\end{align*}")
        lines.append(
            f"% L[s] minus FP-Diffusion Table 3's form simplifies to 0: {'yes' if table3 else 'NO'}"
        )
        return "\n".join(lines)
    drift = "(" + ", ".join(show(fi) for fi in fpe.drift) + ")"
    lines = [
        f"Score FPE of the {sde.name.upper()} SDE in D = {dim}, derived with sympy",
        f"  SDE        dx = f dt + g(t) dw,  f(x, t) = {drift}{g2_line}",
        *[f"             {k} = {v}" for k, v in defs],
        f"             {params}",
        "  FPE        d_t q = -div_x(f q) + 1/2 g^2 Lap_x q;  q = exp(phi), divide by q:",
        f"             d_t phi = {show(fpe.log_density_rhs)}",
        f"  -div_x f = {show(neg_div_f)}",
        "  s = grad_x phi:",
    ]
    if vf is not None:
        lines.append(
            "  scalar form  d_t log q = L[s] = "
            + _render_groups(grouped_terms(vf, with_constant=True), False)
        )
        lines.append(f"                          = {show(fpe.operator)}")
        lines.append(
            "  score form   d_t s = grad_x ["
            + _render_groups(grouped_terms(vf, with_constant=False), False)
            + "]"
        )
    else:
        lines.append(f"  scalar form  d_t log q = L[s] = {show(fpe.operator)}")
        lines.append("  score form   d_t s = grad_x L[s]")
    lines += [f"    d_t {show(si)} = {show(ri)}" for si, ri in zip(fpe.s, fpe.score_rhs)]
    lines.append(
        f"  L[s] minus FP-Diffusion Table 3's form simplifies to 0: {'yes' if table3 else 'NO'}"
    )
    return "\n".join(lines)
