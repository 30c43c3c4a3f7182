"""The "symbolic" section of `scorefpe check`: sympy's derivation against the torch operators.

Three kinds of rows, all in D = 2:
1. the derived L[s] (`scorefpe.symbolic.derivation.derive`) equals FP-Diffusion Table 3's typed form;
2. closed-form scores (a 2-D Gaussian with full covariance, a two-component 2-D mixture)
   satisfy the derived scalar and score forms, evaluated with mpmath at 50 digits at random
   rational points, and a rotation added to the Gaussian score leaves the non-zero residual
   that the hand computation predicts;
3. `scorefpe.operators.fp_residual` (exact mode, float64) agrees with the lambdified symbolic
   residual of two non-score fields (Gaussian score + rotation, a nonlinear field) to a relative
   1e-10 of the size of the terms d_t s and grad_x L[s] it subtracts.

The sympy work (derivation, residual expressions, lambdify) is cached per SDE with the field
parameters left symbolic, so a second call costs only the evaluations.
"""

from __future__ import annotations

import enum
import functools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mpmath
import numpy as np
import sympy as sp
import torch

from scorefpe.symbolic import derivation as S
from scorefpe.operators import fp_residual
from scorefpe.sde import make_sde
from scorefpe.validation.result import CheckResult

SECTION = "symbolic"
DIM = 2
DPS = 50  # mpmath digits: round-off ~1e-50 x term size, far below the 1e-12 bound
N_MP_POINTS = 12
N_TORCH_POINTS = 32
CLOSED_FORM_BOUND = 1e-12
TORCH_REL_BOUND = 1e-10
ROTATION_MIN_RESIDUAL = 1e-6  # far above the 1e-12 of a true score, far below g^2 w |x|
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Expr = sp.Expr


class CrossField(enum.Enum):
    """Non-score fields whose residual is compared between sympy and the torch operators."""

    GAUSSIAN_ROTATION = "gaussian+rotation"  # 2-D Gaussian score + w R x (curl 2w)
    NONLINEAR = "nonlinear"  # (p1 sin(x2) e^-t + p2 x1^2 t, p3 x1 x2^2 + cos(x1 t))


FIELD_PARAMS: dict[CrossField, tuple[str, ...]] = {
    CrossField.GAUSSIAN_ROTATION: ("m1", "m2", "c11", "c12", "c22", "w"),
    CrossField.NONLINEAR: ("p1", "p2", "p3"),
}


def _check_sde_name(sde_name: str) -> str:
    if not isinstance(sde_name, str) or sde_name.lower() not in S.SYMBOLIC_SDES:
        raise ValueError(f"unknown SDE {sde_name!r}; choose one of {list(S.SYMBOLIC_SDES)}")
    return sde_name.lower()


def _symbolic_field(
    sde: S.SymbolicSDE, field: CrossField, params: tuple[sp.Symbol, ...]
) -> tuple[Expr, ...]:
    x, t = sde.x, sde.t
    if field is CrossField.GAUSSIAN_ROTATION:
        m1, m2, c11, c12, c22, w = params
        log_q = S.gaussian_log_density(sde, [m1, m2], [[c11, c12], [c12, c22]])
        score = S.gradient(log_q, x)
        return tuple(si + ri for si, ri in zip(score, S.rotation_field(x, w)))
    p1, p2, p3 = params
    return (
        p1 * sp.sin(x[1]) * sp.exp(-t) + p2 * x[0] ** 2 * t,
        p3 * x[0] * x[1] ** 2 + sp.cos(x[0] * t),
    )



@dataclass(frozen=True)
class LambdifiedResidual:
    """A non-score field s and its symbolic residual eps[s] = d_t s - grad_x L[s], lambdified.

    param_names: the field's parameters (`FIELD_PARAMS`), passed by name to the methods.
    field_torch(x_1, x_2, t, *params) -> components as torch tensors (for the operators);
    residual_np, time_derivative_np: the same arguments as numpy float64 arrays.
    """

    sde_name: str
    field: CrossField
    param_names: tuple[str, ...]
    field_torch: Callable[..., list]
    residual_np: Callable[..., list]
    time_derivative_np: Callable[..., list]

    def _params(self, params: Mapping[str, float]) -> list[float]:
        missing = sorted(set(self.param_names) - set(params))
        extra = sorted(set(params) - set(self.param_names))
        if missing or extra:
            raise ValueError(
                f"field {self.field.value!r} takes parameters {list(self.param_names)}; "
                f"missing {missing}, unknown {extra}"
            )
        return [float(params[k]) for k in self.param_names]

    def score_fn(self, params: Mapping[str, float]) -> ScoreFn:
        """The field as a torch score_fn(x (B, 2), t (B,)) -> (B, 2), in x's dtype."""
        values = self._params(params)

        def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # Parameters as 0-d tensors: sympy's torch printer calls torch.pow, which rejects
            # two Python numbers.
            p = [torch.tensor(v, dtype=x.dtype, device=x.device) for v in values]
            out = self.field_torch(x[:, 0], x[:, 1], t, *p)
            out = [torch.as_tensor(o, dtype=x.dtype, device=x.device) for o in out]
            return torch.stack(torch.broadcast_tensors(*out, t), -1)[..., :-1]

        return score_fn

    def residual(
        self, x: np.ndarray, t: np.ndarray, params: Mapping[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """eps (B, 2) and the term scale ||d_t s||_inf + ||grad_x L[s]||_inf (B,), float64."""
        p = self._params(params)
        x = np.asarray(x, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        args = (x[:, 0], x[:, 1], t, *p)
        eps = np.stack(np.broadcast_arrays(*self.residual_np(*args), t), -1)[:, :-1]
        dts = np.stack(np.broadcast_arrays(*self.time_derivative_np(*args), t), -1)[:, :-1]
        grad_l = dts - eps
        scale = np.abs(dts).max(-1) + np.abs(grad_l).max(-1)
        return eps, scale


@functools.lru_cache(maxsize=16)
def lambdified_residual(sde_name: str, field: CrossField) -> LambdifiedResidual:
    """Build (once per SDE and field) the symbolic residual of `field` from the derived equation
    (`scorefpe.symbolic.derivation.derive(sde_name, 2)`) with the SDE's default parameters, and lambdify it.

    Raises:
        ValueError: unknown SDE name.
    """
    name = _check_sde_name(sde_name)
    field = CrossField(field)
    sde, fpe = S.derive(name, DIM)
    params = sp.symbols(FIELD_PARAMS[field], real=True)
    s = _symbolic_field(sde, field, params)
    eps = [sde.numeric(e) for e in S.apply_residual(fpe, sde, s)]
    dts = [sde.numeric(sp.diff(si, sde.t)) for si in s]
    args = [*sde.x, sde.t, *params]
    return LambdifiedResidual(
        name,
        field,
        tuple(FIELD_PARAMS[field]),
        sp.lambdify(args, [sde.numeric(si) for si in s], modules="torch"),
        sp.lambdify(args, eps, modules="numpy"),
        sp.lambdify(args, dts, modules="numpy"),
    )


def compare_with_operators(
    sde_name: str,
    field: CrossField | str,
    x: torch.Tensor,
    t: torch.Tensor,
    params: Mapping[str, float],
) -> torch.Tensor:
    """Relative difference between `fp_residual(..., method="exact")` and the symbolic residual.

    x: (B, 2) float64, t: (B,) float64 in [0, 1]. Returns (B,):
        ||eps_torch - eps_sym||_inf / (||d_t s||_inf + ||grad_x L[s]||_inf),
    the difference measured against the terms the residual subtracts, since float64 round-off
    (~1e-16 of those terms, times a small condition factor) is all that may separate the two.
    Cost: one exact residual (D + 1 JVPs and a backward) plus numpy evaluations.

    Raises:
        ValueError: unknown SDE or field, wrong parameters, or fp_residual's input errors.
    """
    lam = lambdified_residual(_check_sde_name(sde_name), CrossField(field))
    eps_torch = fp_residual(lam.score_fn(params), make_sde(lam.sde_name), x, t, method="exact")
    eps_sym, scale = lam.residual(x.detach().cpu().numpy(), t.detach().cpu().numpy(), params)
    diff = np.abs(eps_torch.detach().cpu().numpy() - eps_sym).max(-1)
    # Where every term is exactly 0 (e.g. x at the mean, no rotation) only an exact 0 agrees.
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, diff / scale, np.where(diff == 0, 0.0, np.inf))
    return torch.as_tensor(rel, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Closed forms in high precision
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ClosedForms:
    args: tuple[sp.Symbol, ...]  # x_1, x_2, t, density parameters, SDE parameters
    gaussian: Callable[..., list]  # [scalar residual, eps_1, eps_2]
    mixture: Callable[..., list]
    rotation: Callable[..., list]  # [eps_1 - pred_1, eps_2 - pred_2, pred_1, pred_2]


@functools.lru_cache(maxsize=8)
def _closed_forms(sde_name: str) -> _ClosedForms:
    sde, fpe = S.derive(sde_name, DIM)
    m = sp.symbols("m_1:5", real=True)  # means: Gaussian (m1, m2), mixture 2nd mean (m3, m4)
    c = sp.symbols("c_1:7", real=True)  # covariances (c11, c12, c22) x 2
    w, pi = sp.symbols("w pi_1", real=True)
    cov1 = [[c[0], c[1]], [c[1], c[2]]]
    cov2 = [[c[3], c[4]], [c[4], c[5]]]
    gauss = S.lazy_mixture_density(sde, [1], [m[:2]], [cov1])
    mix = S.lazy_mixture_density(sde, [pi, 1 - pi], [m[:2], m[2:]], [cov1, cov2])
    score = S.gradient(sp.log(gauss.density), sde.x)
    rotated = [si + ri for si, ri in zip(score, S.rotation_field(sde.x, w))]
    eps_rot = S.apply_residual(fpe, sde, rotated)
    pred = S.predicted_rotation_residual(fpe, sde, score, w)
    # The SDE's parameters are arguments, not substituted: cheaper than subs on large trees.
    args = (*sde.x, sde.t, *m, *c, w, pi, *(p for p, _ in sde.params))
    return _ClosedForms(
        args,
        S.compile_mpmath(S.density_residuals(fpe, sde, gauss.density), args, gauss.coefficients),
        S.compile_mpmath(S.density_residuals(fpe, sde, mix.density), args, mix.coefficients),
        S.compile_mpmath(
            [*(e - p for e, p in zip(eps_rot, pred)), *pred], args, gauss.coefficients
        ),
    )


def _rational(rng: random.Random, lo: float, hi: float, den: int = 1000) -> sp.Rational:
    return sp.Rational(rng.randint(round(lo * den), round(hi * den)), den)


def _random_density_params(rng: random.Random) -> list[sp.Rational]:
    """Means in [-2, 2]; covariances [[a, b], [b, c]] with a, c in [0.05, 3], |b| < sqrt(ac);
    rotation strength w in [0.25, 1]; mixture weight pi in [0.1, 0.9]."""
    means = [_rational(rng, -2, 2) for _ in range(4)]
    covs: list[sp.Rational] = []
    for _ in range(2):
        a, cc = _rational(rng, 0.05, 3), _rational(rng, 0.05, 3)
        rho = _rational(rng, -0.9, 0.9)
        # b = rho sqrt(ac) rounded to a rational keeps |b| < sqrt(ac) for |rho| <= 0.9.
        b = sp.Rational(round(float(rho * sp.sqrt(a * cc)) * 1000), 1000)
        covs += [a, b, cc]
    return [*means, *covs, _rational(rng, 0.25, 1), _rational(rng, 0.1, 0.9)]


def _mp_abs(fn: Callable[..., list], points: list[list[sp.Rational]]) -> np.ndarray:
    """|fn(point)| for each point, as float64 (n_points, n_outputs), computed at DPS digits."""
    with mpmath.workdps(DPS):
        return np.array([
            [float(abs(mpmath.mpmathify(v))) for v in fn(*[mpmath.mpf(q.p) / q.q for q in p])]
            for p in points
        ])  # fmt: skip


def run_symbolic_checks(sde_name: str, *, seed: int = 0) -> list[CheckResult]:
    """The "symbolic" rows of `scorefpe check` for the VE, VP or sub-VP SDE (default parameters).

    Deterministic for a given seed (density parameters, evaluation points, torch points).
    Cost: a few seconds on the first call per SDE (derivation, residual expressions, lambdify,
    one sympy simplify), well under a second after that.

    Raises:
        ValueError: unknown SDE name.
    """
    name = _check_sde_name(sde_name)
    rng = random.Random(seed)
    rows: list[CheckResult] = []
    sde, fpe = S.derive(name, DIM)

    same = S.is_zero(fpe.operator - S.table3_operator(sde, fpe.s))
    rows.append(CheckResult(
        SECTION, "derived L[s] equals FP-Diffusion Table 3 form (D=2; 0 = identical)",
        0.0 if same else 1.0, 0.0,
        detail="sympy simplify(L[s] from q = exp(phi) in the FPE - typed Table 3 L[s])",
    ))  # fmt: skip

    cf = _closed_forms(name)
    dens = _random_density_params(rng)
    points = [
        [_rational(rng, -3, 3), _rational(rng, -3, 3), _rational(rng, 0.001, 1), *dens,
         *(v for _, v in sde.params)]
        for _ in range(N_MP_POINTS)
    ]
    detail = (
        f"mpmath {DPS} digits at {N_MP_POINTS} random rational (x, t), t in [1e-3, 1], seed {seed}"
    )
    for label, fn in (("2-D Gaussian (full covariance)", cf.gaussian),
                      ("2-component 2-D mixture", cf.mixture)):  # fmt: skip
        vals = _mp_abs(fn, points)
        rows.append(CheckResult(
            SECTION, f"{label}: max |d_t log q - L[s]|", float(vals[:, 0].max()),
            CLOSED_FORM_BOUND, detail=detail,
        ))  # fmt: skip
        rows.append(CheckResult(
            SECTION, f"{label}: max |eps[s]| (score form)", float(vals[:, 1:].max()),
            CLOSED_FORM_BOUND, detail=detail,
        ))  # fmt: skip
    rot = _mp_abs(cf.rotation, points)
    pred_norm = rot[:, 2:].max(-1)
    rows.append(CheckResult(
        SECTION, "Gaussian score + rotation: max |eps - predicted| / |predicted|",
        float((rot[:, :2].max(-1) / pred_norm).max()), CLOSED_FORM_BOUND,
        detail=f"predicted eps = -grad(g^2 <s, r> + g^2 |r|^2 / 2), r = w R x; {detail}",
    ))  # fmt: skip
    rows.append(CheckResult(
        SECTION, "Gaussian score + rotation: median ||eps||_inf (non-zero: not a score)",
        float(np.median(pred_norm)), ROTATION_MIN_RESIDUAL, relation=">=",
        detail=f"a true score gives < {CLOSED_FORM_BOUND:g} in the rows above; {detail}",
    ))  # fmt: skip

    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(N_TORCH_POINTS, DIM, generator=g, dtype=torch.float64)
    t = 1e-3 + (1 - 1e-3) * torch.rand(N_TORCH_POINTS, generator=g, dtype=torch.float64)
    values = [float(v) for v in dens]
    field_params = {
        CrossField.GAUSSIAN_ROTATION: dict(zip(FIELD_PARAMS[CrossField.GAUSSIAN_ROTATION],
                                               [*values[:2], *values[4:7], values[10]])),
        CrossField.NONLINEAR: {"p1": values[0], "p2": values[1], "p3": values[2]},
    }  # fmt: skip
    for field, params in field_params.items():
        rel = compare_with_operators(name, field, x, t, params)
        rows.append(CheckResult(
            SECTION, f"fp_residual (exact) vs sympy, {field.value} field: max rel. diff.",
            float(rel.max()), TORCH_REL_BOUND,
            detail=f"{N_TORCH_POINTS} points, x ~ 3 N(0, I), t ~ U[1e-3, 1], float64, seed {seed}; "
            "relative to ||d_t s|| + ||grad L||",
        ))  # fmt: skip
    return rows
