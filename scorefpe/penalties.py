"""Training losses: sigma-weighted DSM and the score penalties of the 2026 paper and FP-Diffusion.

With x(t) = a(t) x(0) + sigma(t) z, z ~ N(0, I), t ~ U[t_min, T] and D entries per sample:

    L_DSM = E || sigma(t) s(x(t), t) + z ||^2                 (2026 paper, eq. 7)
    P_FP  = E || eps[s](x(t), t) ||^2                          (eq. 13; eps = d_t s - grad_x L[s])
    P_SN  = 1/D E || s(x(t), t) ||^2                           (eq. 15)
    P_JAC = 1/D E || grad_x s ||_F^2    (Hutchinson, K = 1)    (eq. 16)
    P_DIV = 1/D E (div_x s)^2           (Hutchinson, K = 1)    (eq. 17)
    R_FP  = alpha omega(t) || eps ||_2^m / D^m + beta | L[s] |  (FP-Diffusion eq. 19; omega as in their code)

and the training objective L = L_DSM + lambda P (eq. 20). Every function here returns the
per-sample quantity inside the expectation, shape (B,), so that the training loop reduces and
logs each term. Every derivative of s is taken by `scorefpe.operators` with
``create_graph=True`` (parameters receive gradients through it); nothing here differentiates.

Estimator properties (K = 1 probe v, Gaussian unless told; J = ds/dx, J_sym = (J + J^T)/2):
    P_JAC: ||J v||^2 / D is unbiased for ||J||_F^2 / D.
    P_DIV: (v^T J v)^2 / D is *biased upwards*: E = ((div s)^2 + 2 ||J_sym||_F^2) / D (Gaussian),
           ((div s)^2 + 2 (||J_sym||_F^2 - sum_i J_ii^2)) / D (Rademacher). This is the papers'
           estimator (eq. 18 with K = 1, then squared); the bias is itself a Jacobian penalty.
    P_FP:  ||eps_hat||^2 with the estimated residual (finite-difference d_t s, Hutchinson div)
           is biased upwards by tr Cov(eps_hat) and by the O(h^2) stencil error.
With ``estimator="fd"`` (`Estimator`) the same expectations hold up to O(h_x^2): DIV and JAC take
J v by a forward difference, FP estimates ||eps||^2 by the squared projection <eps_hat, v>^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import torch

from scorefpe._util import parse_choice
from scorefpe import operators
from scorefpe.operators import Probe, ResidualMethod
from scorefpe.sde import SDE, bcast

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "LossTerms",
    "Estimator",
    "Omega",
    "Penalty",
    "PenaltyConfig",
    "TimeProposal",
    "draw_times",
    "divergence_penalty",
    "dsm_loss",
    "fp_diffusion_regulariser",
    "fp_penalty",
    "jacobian_penalty",
    "penalized_dsm",
    "score_norm_penalty",
]


class Penalty(str, Enum):
    """The penalty P in L = L_DSM + lambda P. FPD is FP-Diffusion's R_FP (alpha/beta/omega/m)."""

    NONE = "none"
    FP = "fp"
    SN = "sn"
    JAC = "jac"
    DIV = "div"
    FPD = "fpd"


class Estimator(str, Enum):
    """How the derivatives inside DIV, JAC, FP and FPD are estimated.

    autograd: reverse mode (v^T J by a VJP; for FP grad_x L by a double backward), the papers'
        estimators; round-off error only, given the probes.
    fd: finite differences in x, no derivative of the network: J v by a forward difference of
        step h_x for DIV/JAC (one call on 2B rows that also yields the DSM score); for FP/FPD the
        projected residual <eps, v> = <d_t s, v> - D_v L of FP-Diffusion App. C.4 with
        E_v <eps, v>^2 = ||eps||^2 (`operators.score_and_projected_fp_residual`). Bias O(h_x^2)
        against the autograd estimator's expectation; for FP more variance (the projection).
    """

    AUTOGRAD = "autograd"
    FD = "fd"


# Default step in x of the fd estimators: 1e-3 for the first differences of DIV/JAC (float32
# round-off ~1e-4 relative), 3e-3 for FP's mixed second difference (round-off ~eps_32 / h_x^2
# against truncation ~h_x; see operators.score_and_projected_fp_residual).
_H_X = {"jv": 1e-3, "fp": 3e-3}


class TimeProposal(str, Enum):
    """Distribution the objective draws t from; the terms are reweighted by p(t) / q(t) with p
    the uniform density on [t_min, T], so every term's batch mean stays unbiased.

    uniform: q = p (weights 1; the papers' choice).
    log-mixture: q = 1/2 U[t_min, T] + 1/2 q_1, q_1 proportional to 1 / t on [t_min, T]
        (log-uniform). A per-sample penalty that grows like 1 / sigma(t)^2 ~ 1 / t as t -> t_min
        (VP; P_DIV of a network whose Jacobian is O(1 / sigma)) dominates the batch mean under p
        through the one or two smallest t; under q the weight p / q ~ 2 t log(T / t_min) / (T -
        t_min) cancels that growth.
    inverse-square-mixture: q = 1/2 U[t_min, T] + 1/2 q_2, q_2 proportional to 1 / t^2: for
        penalties growing like 1 / t^2 or faster (P_FP: d_t s ~ sigma' / sigma^2).
    Both keep p / q <= 2 everywhere (the uniform half), so no weight explodes.
    """

    UNIFORM = "uniform"
    LOG_MIXTURE = "log-mixture"
    INVERSE_SQUARE_MIXTURE = "inverse-square-mixture"


def draw_times(
    u: Tensor, c: Tensor, t_min: float, t_max: float, proposal: TimeProposal | str
) -> tuple[Tensor, Tensor]:
    """(t, w): times from ``proposal`` made of uniforms u, c in [0, 1) (shape (B,)), and the
    importance weights w = p(t) / q(t), p = U[t_min, t_max] (E_q[w f(t)] = E_p[f(t)]).

    uniform: t = t_min + (t_max - t_min) u, w = 1 (c unused). The mixtures: c < 1/2 picks the
    heavy component by inversion of its CDF (log-uniform: t = t_min (t_max / t_min)^u; 1 / t^2:
    1 / t = 1 / t_min - u (1 / t_min - 1 / t_max)), else the uniform one with the same u.

    Raises:
        ValueError: not 0 < t_min < t_max, or shapes of u and c differ.
    """
    prop = parse_choice(TimeProposal, proposal, "time proposal")
    if not (0 < t_min < t_max):
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    if u.shape != c.shape:
        raise ValueError(f"u {tuple(u.shape)} and c {tuple(c.shape)} must have the same shape")
    span = t_max - t_min
    t_uni = t_min + span * u
    if prop is TimeProposal.UNIFORM:
        return t_uni, torch.ones_like(u)
    ud = u.double()
    if prop is TimeProposal.LOG_MIXTURE:
        log_ratio = math.log(t_max / t_min)
        t_heavy = t_min * torch.exp(ud * log_ratio)
        heavy_density = lambda tq: 1.0 / (tq * log_ratio)  # noqa: E731
    else:
        inv_span = 1.0 / t_min - 1.0 / t_max
        t_heavy = 1.0 / (1.0 / t_min - ud * inv_span)
        heavy_density = lambda tq: 1.0 / (tq * tq * inv_span)  # noqa: E731
    tq = torch.where(c < 0.5, t_heavy, t_uni.double()).clamp(t_min, t_max)
    q = 0.5 / span + 0.5 * heavy_density(tq)
    return tq.to(u.dtype), ((1.0 / span) / q).to(u.dtype)


class Omega(str, Enum):
    """Time weight omega(t) of FP-Diffusion's residual term: 1 (MNIST) or g(t)^2 (CIFAR-10)."""

    ONE = "one"
    G2 = "g2"


def _dim(x: Tensor) -> int:
    return int(math.prod(x.shape[1:]))


def _wide(v: Tensor) -> Tensor:
    """v in float32 at least (bf16/fp16 sums over D = 784 lose digits; float64 stays float64)."""
    return v.to(torch.promote_types(v.dtype, torch.float32))


def _sq_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).pow(2).sum(-1)


# --------------------------------------------------------------------------------------------
# Per-sample terms.
# --------------------------------------------------------------------------------------------


def dsm_loss(s: Tensor, z: Tensor, std: Tensor) -> Tensor:
    """|| sigma(t) s(x(t), t) + z ||^2 per sample (2026 paper eq. 7), shape (B,).

    s: the model's score at x(t) = a(t) x(0) + sigma(t) z, shaped like z; std: sigma(t), (B,).
    Computed in float32 at least (the sum over D = 784 squares loses digits in bf16/fp16).
    """
    if s.shape != z.shape:
        raise ValueError(f"s {tuple(s.shape)} and z {tuple(z.shape)} must have the same shape")
    r = _wide(bcast(std, s)) * _wide(s) + _wide(z)
    return _sq_norm(r)


def score_norm_penalty(s: Tensor) -> Tensor:
    """P_SN per sample: || s ||^2 / D, shape (B,). Reuses the DSM forward: no extra model call."""
    return _sq_norm(_wide(s)) / _dim(s)


def jacobian_penalty(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    *,
    generator: torch.Generator | None = None,
    probe: Probe | str = Probe.GAUSSIAN,
    n_probes: int = 1,
    estimator: Estimator | str = Estimator.AUTOGRAD,
    h_x: float | None = None,
) -> Tensor:
    """P_JAC per sample: ||J v||^2 / D (Hutchinson, K = n_probes), unbiased for ||J||_F^2 / D.

    Cost (autograd): one VJP of score_fn (a forward and a backward, create_graph) plus the
    backward through it. fd: J v by a forward difference of step h_x (default 1e-3), one call on
    2B rows and its backward; bias O(h_x^2). Shape (B,).
    """
    j2 = operators.jacobian_frobenius_sq(
        score_fn, x, t, method=_div_method(estimator), n_probes=n_probes, probe=probe,
        generator=generator, h_x=_h(h_x, "jv"), create_graph=True,
    )
    return j2 / _dim(x)


def _div_method(estimator: Estimator | str) -> operators.DivergenceMethod:
    e = parse_choice(Estimator, estimator, "estimator")
    dm = operators.DivergenceMethod
    return dm.HUTCHINSON_FD if e is Estimator.FD else dm.HUTCHINSON


def _h(h_x: float | None, kind: str) -> float:
    return _H_X[kind] if h_x is None else float(h_x)


def divergence_penalty(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    *,
    generator: torch.Generator | None = None,
    probe: Probe | str = Probe.GAUSSIAN,
    n_probes: int = 1,
    estimator: Estimator | str = Estimator.AUTOGRAD,
    h_x: float | None = None,
) -> Tensor:
    """P_DIV per sample: (Hutchinson div_x s)^2 / D with K = n_probes probes, shape (B,).

    Biased upwards by the estimator's variance / D (see the module docstring): with Gaussian
    probes E = ((div s)^2 + 2 ||J_sym||_F^2 / K) / D. Cost (autograd): one VJP plus the backward
    through it; fd: v^T J v with J v by a forward difference of step h_x (default 1e-3), one call
    on 2B rows and its backward, bias O(h_x^2).
    """
    div = operators.divergence(
        score_fn, x, t, method=_div_method(estimator), n_probes=n_probes, probe=probe,
        generator=generator, h_x=_h(h_x, "jv"), create_graph=True,
    )
    return div.pow(2) / _dim(x)


def fp_penalty(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor,
    *,
    t_min: float,
    generator: torch.Generator | None = None,
    probe: Probe | str = Probe.GAUSSIAN,
    method: ResidualMethod | str = ResidualMethod.ESTIMATED,
    estimator: Estimator | str = Estimator.AUTOGRAD,
    h_x: float | None = None,
) -> Tensor:
    """P_FP per sample: || eps[s](x, t) ||^2 (2026 paper eq. 13; no 1/D), shape (B,).

    autograd (default): eps from ``operators.fp_residual`` (default ``method="estimated"``:
    FP-Diffusion's nonuniform stencil for d_t s, one-sided near t_min and T so that s is never
    evaluated outside [t_min, T]; Hutchinson K = 1 for div s). Cost: one VJP (whose forward is
    s(x, t)) and a double backward for grad_x L, 2 F for the stencil's other nodes (the offset-0
    node reuses s(x, t)), and the backward of all of it.
    fd: <eps_hat, v>^2 from ``operators.projected_fp_residual`` (step h_x, default 3e-3; same
    stencil in t): E_v <eps, v>^2 = ||eps||^2, no derivative of the network, 6 rows per sample.
    ``method`` applies to autograd only.
    """
    _, pen, _ = _fp_terms(score_fn, sde, x, t, t_min, generator, probe, method, estimator, h_x, False)
    return pen


def _fp_terms(
    score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor, t_min: float,
    generator: torch.Generator | None, probe: Probe | str, method: ResidualMethod | str,
    estimator: Estimator | str, h_x: float | None, want_operator: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(s, estimate of ||eps||^2 per sample, L[s] on the same probes when asked) in one operator
    call: autograd (VJP + double backward) or fd (projected residual)."""
    if parse_choice(Estimator, estimator, "estimator") is Estimator.FD:
        s, lop, r = operators.score_and_projected_fp_residual(
            score_fn, sde, x, t, probe=probe, generator=generator, h_x=_h(h_x, "fp"),
            t_min=t_min, create_graph=True,
        )
        return s, _wide(r).pow(2).mean(0), lop
    if want_operator:
        s, lop, eps = operators.score_operator_and_fp_residual(
            score_fn, sde, x, t, method=method, probe=probe, generator=generator, t_min=t_min,
            create_graph=True,
        )
        return s, _sq_norm(eps), lop
    s, eps = operators.score_and_fp_residual(
        score_fn, sde, x, t, method=method, probe=probe, generator=generator, t_min=t_min,
        create_graph=True,
    )
    return s, _sq_norm(eps), None


def fp_diffusion_regulariser(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor,
    *,
    alpha: float,
    beta: float = 0.0,
    omega: Omega | str = Omega.ONE,
    m: int = 1,
    t_min: float,
    generator: torch.Generator | None = None,
    probe: Probe | str = Probe.GAUSSIAN,
    method: ResidualMethod | str = ResidualMethod.ESTIMATED,
    estimator: Estimator | str = Estimator.AUTOGRAD,
    h_x: float | None = None,
) -> Tensor:
    """FP-Diffusion's R_FP per sample (their eq. 19 integrand), shape (B,):

        alpha omega(t) || eps[s](x, t) ||_2^m / D^m + beta | L[s](x, t) |

    omega(t) = 1 or g(t)^2; (alpha, beta, omega, m) = (0.1..1, 0, 1, 1) for their MNIST runs and
    (0.15, 0.01, g^2, 2) for CIFAR-10.

    Where omega sits: eq. 19 as printed reads ||Lambda_FP(t) eps||^m, i.e. omega inside the norm
    (g^4 ||eps||^2 for g^2, m = 2). We follow their code instead, which multiplies the m-th power
    of the norm by g^2 (sde_lib's PDE class, wgt='ll': res = g_2 * ||eps||^m): (1) the paper calls
    Lambda_FP "the time-weighting function" of the residual term, the role lambda(t) = g^2 plays
    in J_DSM, where it multiplies the squared norm; (2) the CIFAR-10 setting (0.15, 0.01, g^2, 2)
    was tuned with that code, so only this reading reproduces it; (3) the readings coincide for
    omega = 1 or m = 1 and differ by g^(2m - 2) otherwise, i.e. exactly in that setting. The
    1/D^m normalisation is in both.

    L[s] uses the divergence estimate of the residual (same probe), so both terms come from one
    operator call; its absolute value is biased upwards. L[s] = d_t log q_t is not zero for the
    true score: the beta term is FP-Diffusion's "time-derivative taming", not a residual.
    estimator="fd": the projected residual (see `fp_penalty`); it estimates ||eps||^2 without
    bias, not ||eps||, so it requires m = 2.

    Raises:
        ValueError: alpha or beta negative / non-finite, m not a positive integer, unknown omega,
            estimator "fd" with m != 2.
    """
    for name, val in (("alpha", alpha), ("beta", beta)):
        if not (val >= 0 and math.isfinite(val)):
            raise ValueError(f"{name} must be >= 0 and finite, got {val!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    om = parse_choice(Omega, omega, "omega")
    est = parse_choice(Estimator, estimator, "estimator")
    if est is Estimator.FD and m != 2:
        raise ValueError(f"estimator 'fd' estimates ||eps||^2 and needs m = 2, got m={m!r}")
    if alpha == 0 and beta == 0:
        return torch.zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    if alpha == 0:  # L[s] alone: one VJP (or one 2B difference), no residual
        lop = operators.fp_operator(
            score_fn, sde, x, t, method=_div_method(est), probe=probe, generator=generator,
            create_graph=True,
        )
        return beta * _wide(lop).abs()
    _, sq, lop = _fp_terms(score_fn, sde, x, t, t_min, generator, probe, method, est, h_x, beta > 0)
    return _fpd_value(sde, t, sq, lop, alpha, beta, om, m, _dim(x))


def _fpd_value(
    sde: SDE, t: Tensor, sq_norm: Tensor, lop: Tensor | None, alpha: float, beta: float,
    omega: Omega, m: int, d: int,
) -> Tensor:
    """alpha omega(t) (||eps||^2)^(m/2) / D^m + beta |L| from the squared-norm estimate."""
    w = torch.ones_like(t) if omega is Omega.ONE else sde.diffusion(t) ** 2
    sq = _wide(sq_norm)
    # ||eps||^m from ||eps||^2 without a sqrt for even m (the sqrt's gradient is infinite at 0).
    norm_m = sq.pow(m // 2) if m % 2 == 0 else sq.sqrt().pow(m)
    out = alpha * _wide(w) * norm_m / d**m
    if beta > 0:
        assert lop is not None
        out = out + beta * _wide(lop).abs()
    return out


# --------------------------------------------------------------------------------------------
# The objective L = L_DSM + lambda P on one batch.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerms:
    """Per-sample loss terms and their weights: total = sum_k weights[k] * mean(terms[k]).

    terms[k] has shape (B_k,) (B_k = B, or a sub-batch size for a sub-sampled penalty), unweighted,
    so that each term can be logged on its own scale.
    """

    terms: dict[str, Tensor]
    weights: dict[str, float] = field(default_factory=dict)

    def total(self) -> Tensor:
        """sum_k weights[k] * mean(terms[k]) as a scalar (float32 or wider)."""
        out = None
        for k, v in self.terms.items():
            w = self.weights.get(k, 1.0)
            if w == 0.0:
                continue
            val = w * _wide(v).mean()
            out = val if out is None else out + val
        if out is None:
            raise ValueError("LossTerms has no term with a non-zero weight")
        return out


@dataclass(frozen=True)
class PenaltyConfig:
    """Which penalty, its weight, and the estimator settings. Validated on construction.

    penalty/lam: P and lambda in L = L_DSM + lambda P (for FPD, lam multiplies R_FP; the paper's
        form has lam = 1 and the strength in alpha, beta).
    t_min: lower end of t ~ U[t_min, T] (1e-5 for images, 1e-3 for 2-D data); also the bound the
        finite-difference d_t s must respect.
    probe: Hutchinson probe distribution (K = 1, as in both papers).
    sub_batch: when set, the penalty is evaluated on the first `sub_batch` samples of the batch
        only: unbiased for the batch mean (samples are i.i.d.), variance larger by B / sub_batch,
        cost smaller by about the same factor.
    alpha, beta, omega, m: FP-Diffusion's R_FP (penalty FPD only).
    estimator: autograd (the papers' estimators) or fd (finite differences in x; see `Estimator`).
    h_x: the fd estimators' step in x (default 1e-3 for DIV/JAC, 3e-3 for FP/FPD).
    t_proposal: the distribution of t in the objective (`TimeProposal`; default uniform, the
        papers'); the terms are reweighted so that they stay unbiased.
    """

    penalty: Penalty = Penalty.NONE
    lam: float = 0.0
    t_min: float = 1e-5
    probe: Probe = Probe.GAUSSIAN
    sub_batch: int | None = None
    alpha: float = 0.1
    beta: float = 0.0
    omega: Omega = Omega.ONE
    m: int = 1
    estimator: Estimator = Estimator.AUTOGRAD
    h_x: float | None = None
    t_proposal: TimeProposal = TimeProposal.UNIFORM

    def __post_init__(self) -> None:
        object.__setattr__(self, "penalty", parse_choice(Penalty, self.penalty, "penalty"))
        object.__setattr__(self, "t_proposal", parse_choice(TimeProposal, self.t_proposal, "t_proposal"))
        object.__setattr__(self, "estimator", parse_choice(Estimator, self.estimator, "estimator"))
        if self.h_x is not None and not (
            isinstance(self.h_x, (int, float)) and not isinstance(self.h_x, bool)
            and math.isfinite(self.h_x) and self.h_x > 0
        ):
            raise ValueError(f"h_x must be positive and finite or None, got {self.h_x!r}")
        if self.estimator is Estimator.FD and self.penalty is Penalty.FPD and self.m != 2:
            raise ValueError(f"estimator 'fd' for penalty 'fpd' needs m = 2, got m={self.m!r}")
        object.__setattr__(self, "probe", parse_choice(Probe, self.probe, "probe"))
        object.__setattr__(self, "omega", parse_choice(Omega, self.omega, "omega"))
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam must be >= 0 and finite, got {self.lam!r}")
        if not (0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min!r}")
        if self.sub_batch is not None and (
            isinstance(self.sub_batch, bool) or not isinstance(self.sub_batch, int)
            or self.sub_batch < 1
        ):
            raise ValueError(f"sub_batch must be a positive integer or None, got {self.sub_batch!r}")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0 and finite, got {v!r}")
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1:
            raise ValueError(f"m must be a positive integer, got {self.m!r}")


def _score_and_penalty(
    model: ScoreFn, sde: SDE, x: Tensor, t: Tensor, cfg: PenaltyConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """(s(x, t), per-sample P) for JAC, DIV, FP, FPD from one operator call: the same estimators as
    `jacobian_penalty`, `divergence_penalty`, `fp_penalty`, `fp_diffusion_regulariser` (the tests
    hold them equal)."""
    d = _dim(x)
    if cfg.penalty is Penalty.DIV:
        s, div = operators.score_and_divergence(
            model, x, t, method=_div_method(cfg.estimator), probe=cfg.probe, generator=generator,
            h_x=_h(cfg.h_x, "jv"), create_graph=True,
        )
        return s, div.pow(2) / d
    if cfg.penalty is Penalty.JAC:
        s, j2 = operators.score_and_jacobian_frobenius_sq(
            model, x, t, method=_div_method(cfg.estimator), probe=cfg.probe, generator=generator,
            h_x=_h(cfg.h_x, "jv"), create_graph=True,
        )
        return s, j2 / d
    fpd = cfg.penalty is Penalty.FPD
    s, sq, lop = _fp_terms(model, sde, x, t, cfg.t_min, generator, cfg.probe,
                           ResidualMethod.ESTIMATED, cfg.estimator, cfg.h_x, fpd and cfg.beta > 0)
    if not fpd:
        return s, sq
    return s, _fpd_value(sde, t, sq, lop, cfg.alpha, cfg.beta, cfg.omega, cfg.m, d)


def penalized_dsm(
    model: ScoreFn,
    sde: SDE,
    x0: Tensor,
    t: Tensor,
    z: Tensor,
    cfg: PenaltyConfig,
    *,
    generator: torch.Generator | None = None,
    penalty_model: ScoreFn | None = None,
    weights: Tensor | None = None,
) -> LossTerms:
    """L_DSM and lambda P on one batch with given times and noises, as per-sample terms.

    x0: clean data (B, ...); t: (B,) in [t_min, T]; z: N(0, I) noise shaped like x0;
    generator: draws the Hutchinson probes. penalty_model: the same network to hand to the
    operators when ``model`` is a wrapper that torch.func cannot trace (DDP); default ``model``.

    Returns LossTerms with "dsm" (weight 1) and, unless penalty is NONE, the penalty under its
    name ("fp", "sn", "jac", "div", "fpd") with weight lam. Cost: one forward for DSM, plus
    the penalty's (see each function); for JAC, DIV, FP and FPD (alpha > 0) the forward inside the penalty's
    operator supplies s on the penalised samples, so the DSM forward covers only the others.
    weights: (B,) importance weights p(t) / q(t) of times drawn from a proposal q
    (`draw_times`); every per-sample term is multiplied by its sample's weight.
    """
    mean, std = sde.marginal(x0, t)
    xt = mean + bcast(std, x0) * z
    p = cfg.penalty
    b = x0.shape[0]
    k = b if cfg.sub_batch is None else min(cfg.sub_batch, b)
    xs, ts = xt[:k].detach(), t[:k]
    pen = None
    shared = (Penalty.JAC, Penalty.DIV, Penalty.FP) + ((Penalty.FPD,) if cfg.alpha > 0 else ())
    if p in shared and penalty_model is None:
        # The penalty's first pass (a VJP, or the VJP inside the FP residual) evaluates s on the
        # penalised samples; the DSM term reuses it and evaluates the model only on the rest.
        s_pen, pen = _score_and_penalty(model, sde, xs, ts, cfg, generator)
        s = s_pen if k == b else torch.cat([s_pen, model(xt[k:], t[k:])])
    else:
        s = model(xt, t)
    w_iw = None if weights is None else _wide(weights.detach())
    dsm = dsm_loss(s, z, std)
    terms = {"dsm": dsm if w_iw is None else w_iw * dsm}
    lam_of = {"dsm": 1.0}
    if p is Penalty.NONE:
        return LossTerms(terms, lam_of)
    if pen is None:
        net = penalty_model if penalty_model is not None else model
        if p is Penalty.SN:
            pen = score_norm_penalty(s[:k])
        elif p is Penalty.JAC:
            pen = jacobian_penalty(net, xs, ts, generator=generator, probe=cfg.probe,
                                   estimator=cfg.estimator, h_x=cfg.h_x)
        elif p is Penalty.DIV:
            pen = divergence_penalty(net, xs, ts, generator=generator, probe=cfg.probe,
                                     estimator=cfg.estimator, h_x=cfg.h_x)
        elif p is Penalty.FP:
            pen = fp_penalty(net, sde, xs, ts, t_min=cfg.t_min, generator=generator, probe=cfg.probe,
                             estimator=cfg.estimator, h_x=cfg.h_x)
        else:
            pen = fp_diffusion_regulariser(
                net, sde, xs, ts, alpha=cfg.alpha, beta=cfg.beta, omega=cfg.omega, m=cfg.m,
                t_min=cfg.t_min, generator=generator, probe=cfg.probe, estimator=cfg.estimator,
                h_x=cfg.h_x,
            )
    terms[p.value] = _wide(pen) if w_iw is None else w_iw[:k] * _wide(pen)
    lam_of[p.value] = float(cfg.lam)
    return LossTerms(terms, lam_of)
