"""Differential operators on score functions: the only place scorefpe differentiates a score.

A score function is any callable ``score_fn(x, t) -> tensor shaped like x`` with x of shape
(B, ...) (flat (B, D) or images (B, C, H, W)) and t of shape (B,), same dtype and device. It must
treat samples independently (no batch statistics): the exact operators evaluate it on a batch
replicated along the batch axis, one replica per basis direction or probe.

Notation (FP-Diffusion, Prop. 3.1; ../shared/docs/math.md): J = ds/dx (per sample, D x D,
J[r, c] = d s_r / d x_c), D = number of entries per sample,

    L[s]   = 1/2 g^2 div_x s + 1/2 g^2 |s|^2 - <f, s> - div_x f
    eps[s] = d_t s - grad_x L[s]          (vector score-FPE residual; zero for a true score)

Every operator comes in an exact variant and an estimated one that take the same arguments, so a
test can hold one against the other. Costs are counted in evaluations of score_fn on a batch of B
("F"), vector-Jacobian products ("VJP": v^T J by one backward pass, about 2 F, on a batch
replicated once per probe or basis vector) and the forward-mode JVP in t (about 2-3 F).

Differentiability: with ``create_graph=True`` the result stays in the autograd graph (parameters of
score_fn and x, if it requires grad, receive gradients), as training penalties need. With the
default ``create_graph=False`` results are detached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch

from scorefpe._util import parse_choice
from scorefpe.sde import SDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
LogProbFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "DivergenceMethod",
    "FPResidualEstimator",
    "Probe",
    "ResidualMethod",
    "Stencil",
    "STENCILS",
    "TimeMethod",
    "apply_stencil",
    "divergence",
    "anchor_divergence",
    "anchor_fp_residual",
    "anchor_jacobian_frobenius_sq",
    "fp_operator",
    "fp_residual",
    "fp_residual_phase_times",
    "jacobian_vector_product",
    "projected_fp_residual",
    "jacobian",
    "jacobian_asymmetry_sq",
    "jacobian_diagonal",
    "jacobian_frobenius_sq",
    "probes",
    "scalar_fp_residual",
    "score_and_divergence",
    "score_and_fp_residual",
    "score_and_jacobian_frobenius_sq",
    "score_and_projected_fp_residual",
    "score_operator_and_fp_residual",
    "time_derivative",
]


class DivergenceMethod(str, Enum):
    """How a trace-type quantity of J is computed: exactly (D VJPs), by Hutchinson probes with
    v^T J by reverse mode, or by Hutchinson probes with J v by a forward difference in x."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"
    HUTCHINSON_FD = "hutchinson-fd"


class Probe(str, Enum):
    """Probe distribution of the stochastic estimators, both with E[v v^T] = I."""

    GAUSSIAN = "gaussian"
    RADEMACHER = "rademacher"


class TimeMethod(str, Enum):
    """How d_t s is computed: forward-mode autodiff in t, or a finite-difference stencil."""

    EXACT = "exact"
    CENTRAL = "central"
    NONUNIFORM = "nonuniform"


class ResidualMethod(str, Enum):
    """Exact residual (forward-mode d_t s, exact divergence) or the estimated one of the papers
    (finite-difference d_t s, Hutchinson divergence)."""

    EXACT = "exact"
    ESTIMATED = "estimated"


# --------------------------------------------------------------------------------------------
# Input checks: done once, at each public entry point.
# --------------------------------------------------------------------------------------------


def _as_time(t: Tensor | float, x: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    t = t.to(dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must be a scalar or have shape (B,) = ({x.shape[0]},) to match x of shape "
            f"{tuple(x.shape)}; got t of shape {tuple(t.shape)}"
        )
    return t


def _check_inputs(
    x: Tensor, t: Tensor | float, t_min: float = 0.0, t_max: float | None = None
) -> Tensor:
    """Validate x (B, ...) and t, return t as a (B,) tensor in x's dtype and device."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"x must have a batch axis and at least one feature axis, shape (B, D) or "
            f"(B, C, H, W); got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch (B = 0)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    tt = _as_time(t, x)
    if not bool(torch.isfinite(tt).all()):
        raise ValueError("t contains NaN or infinite values")
    lo = float(tt.min())
    hi = float(tt.max())
    # t_min = 1e-5 stored in float32 is 9.99999975e-06: allow the rounding of t's own dtype.
    eps = 4 * torch.finfo(tt.dtype).eps
    if lo < t_min - eps * abs(t_min) or (t_max is not None and hi > t_max + eps * abs(t_max)):
        raise ValueError(
            f"t must lie in [t_min, T] = [{t_min}, {t_max}]; got values in [{lo}, {hi}]"
        )
    return tt


def _check_output(s: Tensor, x: Tensor) -> Tensor:
    if not isinstance(s, Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}; got {got}")
    return s


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _dim(x: Tensor) -> int:
    return int(math.prod(x.shape[1:]))


def _finish(y: Tensor, create_graph: bool) -> Tensor:
    return y if create_graph else y.detach()


# --------------------------------------------------------------------------------------------
# Primitive: Jacobian-vector products in x and in t.
# --------------------------------------------------------------------------------------------


def _jvp(fn: Callable[[Tensor], Tensor], primal: Tensor, tangent: Tensor) -> tuple[Tensor, Tensor]:
    """(fn(primal), J_fn(primal) tangent) by forward-mode AD (one pass, ~2-3 F).

    Falls back to the double-backward trick (one forward, two backward passes) for operations
    without forward-mode formulas. Both stay differentiable by reverse mode.
    """
    # Expanded (stride-0) views cannot carry a tangent: forward AD writes into the primal's storage.
    primal, tangent = primal.contiguous(), tangent.contiguous()
    try:
        return torch.func.jvp(fn, (primal,), (tangent,))
    except (NotImplementedError, RuntimeError) as err:
        if "forward" not in str(err).lower():
            raise
    with torch.enable_grad():
        p = primal if primal.requires_grad else primal.detach().requires_grad_(True)
        out = fn(p)
        u = torch.zeros_like(out, requires_grad=True)
        (vjp,) = torch.autograd.grad(out, p, u, create_graph=True, allow_unused=True)
        if vjp is None:
            return out, torch.zeros_like(out)
        (jv,) = torch.autograd.grad(vjp, u, tangent, create_graph=True)
    return out, jv


def _replicate(x: Tensor, m: int) -> Tensor:
    """(B, ...) -> (m * B, ...), replica-major."""
    return x.unsqueeze(0).expand(m, *x.shape).reshape(m * x.shape[0], *x.shape[1:])


def probes(
    n_probes: int,
    x: Tensor,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
) -> Tensor:
    """n_probes independent probe vectors per sample, shape (n_probes, B, ...), E[v v^T] = I."""
    kind = parse_choice(Probe, probe, "probe")
    shape = (n_probes, *x.shape)
    if kind is Probe.GAUSSIAN:
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * bits - 1).to(x.dtype)


def _probe_vjps(score_fn: ScoreFn, x: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """For probes v of shape (K, B, ...): s (B, ...) and J^T v_k stacked as (K, B, ...).

    Reverse mode on a K-fold replicated batch: one forward and one backward (create_graph, so the
    result can be differentiated again). Reverse mode, not forward-mode JVPs, because on CPU
    torch's forward-mode convolution and GroupNorm cost 8-28x their plain forward.
    Every trace-type estimator needs only J^T v: v^T J v = <v, J^T v>, E||J^T v||^2 = ||J||_F^2.
    """
    k, b = v.shape[0], x.shape[0]
    xr = _replicate(x, k)
    if not xr.requires_grad:
        xr = xr.detach().requires_grad_(True)
    with torch.enable_grad():
        s_rep = _check_output(score_fn(xr, t.repeat(k)), xr)
        (u,) = torch.autograd.grad(
            s_rep, xr, v.reshape(k * b, *x.shape[1:]), create_graph=True, allow_unused=True
        )
    if u is None:  # the score does not depend on x
        u = torch.zeros_like(xr)
    return s_rep[:b], u.reshape(v.shape)


def _check_step(name: str, h: float) -> None:
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not (h > 0 and math.isfinite(h)):
        raise ValueError(f"{name} must be positive and finite, got {h!r}")


def _probe_fd_jvps(
    score_fn: ScoreFn, x: Tensor, t: Tensor, v: Tensor, h: float
) -> tuple[Tensor, Tensor, Tensor]:
    """For probes v (K, B, ...): s (B, ...), the forward differences (s(x + h v_k) - s(x)) / h
    ~ J v_k stacked as (K, B, ...), and the probes actually applied, dv_k = (fl(x + h v_k) - x) / h.

    One call of score_fn on (K + 1) B rows, no autograd: the result is differentiable (parameters
    of score_fn, and x) by one ordinary backward through those rows. The differences are J dv_k
    up to the truncation h/2 D^2 s[dv, dv] + O(h^2); using dv (not v) in the estimators removes
    the rounding of x + h v from the error (dv has E[dv dv^T] = I up to (ulp(x) / h)^2).
    """
    k, b = v.shape[0], x.shape[0]
    xp = x.unsqueeze(0) + h * v
    dv = (xp.detach() - x.detach().unsqueeze(0)) / h
    rows = torch.cat([x, xp.reshape(k * b, *x.shape[1:])])
    out = _check_output(score_fn(rows, t.repeat(k + 1)), rows)
    s = out[:b]
    jv = (out[b:].reshape(k, *x.shape) - s.unsqueeze(0)) / h
    return s, jv, dv


def _basis_rows(
    score_fn: ScoreFn, x: Tensor, t: Tensor, chunk_size: int | None
) -> tuple[Tensor, list[tuple[int, Tensor]]]:
    """s and the Jacobian rows J^T e_i in chunks: list of (first index i0, (m, B, D) rows), with
    rows[i - i0, b, c] = J[b, i, c]."""
    b, d = x.shape[0], _dim(x)
    m_max = d if chunk_size is None else max(1, int(chunk_size))
    chunks: list[tuple[int, Tensor]] = []
    s = None
    for i0 in range(0, d, m_max):
        m = min(m_max, d - i0)
        eye = torch.zeros(m, b, d, dtype=x.dtype, device=x.device)
        idx = torch.arange(m, device=x.device)
        eye[idx, :, i0 + idx] = 1.0
        s_c, rows = _probe_vjps(score_fn, x, t, eye.reshape(m, *x.shape))
        if s is None:
            s = s_c
        chunks.append((i0, rows.reshape(m, b, d)))
    assert s is not None
    return s, chunks


def _full_jacobian(score_fn: ScoreFn, x: Tensor, t: Tensor, chunk_size: int | None) -> Tensor:
    _, chunks = _basis_rows(score_fn, x, t, chunk_size)
    return torch.cat([r for _, r in chunks], 0).permute(1, 0, 2)  # (B, D, D): J[b, r, c]


# --------------------------------------------------------------------------------------------
# Jacobian quantities: divergence, Frobenius norm, antisymmetric part.
# --------------------------------------------------------------------------------------------


def _diagonal_and_score(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    method: DivergenceMethod,
    n_probes: int,
    probe: Probe | str,
    generator: torch.Generator | None,
    chunk_size: int | None,
    h_x: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """s and the Jacobian diagonal J_ii, both shaped like x (exact, or v * J^T v averaged)."""
    if method is DivergenceMethod.EXACT:
        s, chunks = _basis_rows(score_fn, x, t, chunk_size)
        parts = []
        for i0, rows in chunks:
            idx = torch.arange(rows.shape[0], device=x.device)
            parts.append(rows[idx, :, i0 + idx].transpose(0, 1))  # (B, m): J[b, i, i]
        diag = torch.cat(parts, 1)
        return s, diag.reshape(x.shape)
    v = probes(n_probes, x, probe, generator)
    if method is DivergenceMethod.HUTCHINSON_FD:
        s, jv, dv = _probe_fd_jvps(score_fn, x, t, v, h_x)
        return s, (dv * jv).mean(0)
    s, jv = _probe_vjps(score_fn, x, t, v)
    return s, (v * jv).mean(0)


def _divergence_and_score(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    method: DivergenceMethod,
    n_probes: int,
    probe: Probe | str,
    generator: torch.Generator | None,
    chunk_size: int | None,
    h_x: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    if method is DivergenceMethod.EXACT:
        s, diag = _diagonal_and_score(score_fn, x, t, method, n_probes, probe, generator, chunk_size)
        return s, _flat(diag).sum(-1)
    v = probes(n_probes, x, probe, generator)
    if method is DivergenceMethod.HUTCHINSON_FD:
        s, jv, v = _probe_fd_jvps(score_fn, x, t, v, h_x)
    else:
        s, jv = _probe_vjps(score_fn, x, t, v)
    k = v.shape[0]
    div = (v.reshape(k, x.shape[0], -1) * jv.reshape(k, x.shape[0], -1)).sum(-1).mean(0)
    return s, div


def _check_probes(n_probes: int) -> None:
    if not isinstance(n_probes, int) or isinstance(n_probes, bool) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")


def divergence(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    h_x: float = 1e-3,
    create_graph: bool = False,
) -> Tensor:
    """div_x s(x, t) = tr J, shape (B,).

    exact: sum_i (e_i^T J)_i over the D basis vectors: D VJPs, batched as one evaluation on a
        (D * B)-row replicated batch (``chunk_size`` basis vectors at a time to bound memory).
        Error: float round-off.
    hutchinson: 1/K sum_k v_k^T J v_k with K = n_probes probes (one VJP each, batched). Unbiased;
        variance per probe 2 ||J_sym||_F^2 (Gaussian) or 2 (||J_sym||_F^2 - sum_i J_ii^2)
        (Rademacher), J_sym = (J + J^T) / 2; divided by K.
    hutchinson-fd: the same with J v_k by the forward difference (s(x + h_x v_k) - s(x)) / h_x:
        one call on (K + 1) B rows and no VJP (a training step's backward traverses plain forward
        rows only). Per probe the truncation error is h_x/2 v^T D^2 s[v, v] + O(h_x^2), odd in v,
        so the bias of the estimate is O(h_x^2); the float32 round-off is about
        eps_32 |s| / (h_x |J v|) relative (1e-4 at h_x = 1e-3 for a unit-scale network).

    Raises:
        ValueError: bad shapes, NaN/inf input, unknown method/probe, n_probes < 1, or a score_fn
            whose output is not shaped like x.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "divergence method")
    _check_probes(n_probes)
    _check_step("h_x", h_x)
    _, div = _divergence_and_score(score_fn, x, tt, m, n_probes, probe, generator, chunk_size, h_x)
    return _finish(div, create_graph)


def jacobian_diagonal(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    h_x: float = 1e-3,
    create_graph: bool = False,
) -> Tensor:
    """The diagonal of the Jacobian, d s_i / d x_i, shaped like x: the pixel-wise contributions
    to div_x s (2026 paper, Figs. 2-5). Summed over entries it is `divergence`.

    exact: (e_i^T J)_i for the D basis vectors: D VJPs (batched, ``chunk_size`` at a time).
        Error: float round-off.
    hutchinson: 1/K sum_k v_k * (J^T v_k) (elementwise; Bekas, Kokiopoulou & Saad 2007), K VJPs.
        Unbiased, since E[v_i v_r] = delta_ir. Variance per probe and entry:
        sum_{r != i} J_ri^2 (Rademacher), J_ii^2 + sum_r J_ri^2 (Gaussian); divided by K.
    hutchinson-fd: 1/K sum_k v_k * (J v_k) with J v by a forward difference of step h_x (see
        `divergence`); bias O(h_x^2).

    Raises:
        ValueError: as `divergence`.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "method")
    _check_probes(n_probes)
    _check_step("h_x", h_x)
    _, diag = _diagonal_and_score(score_fn, x, tt, m, n_probes, probe, generator, chunk_size, h_x)
    return _finish(diag, create_graph)


def score_and_divergence(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    h_x: float = 1e-3,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """(s(x, t), div_x s) from one pass: the VJP's forward output is the score itself.

    Same estimator and arguments as `divergence`. A training step that needs both the DSM term
    and a divergence penalty saves one forward pass (and its backward) by calling this.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "divergence method")
    _check_probes(n_probes)
    _check_step("h_x", h_x)
    s, div = _divergence_and_score(score_fn, x, tt, m, n_probes, probe, generator, chunk_size, h_x)
    return _finish(s, create_graph), _finish(div, create_graph)


def score_and_jacobian_frobenius_sq(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    method: DivergenceMethod | str = DivergenceMethod.HUTCHINSON,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    h_x: float = 1e-3,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """(s(x, t), Hutchinson ||J||_F^2) from one pass whose forward output is the score.

    hutchinson (default): 1/K sum_k ||v_k^T J||^2 by one VJP, as
    `jacobian_frobenius_sq(method="hutchinson")`. hutchinson-fd: 1/K sum_k ||J v_k||^2 with J v_k
    by the forward difference of step h_x (one call on (K + 1) B rows, no VJP); unbiased up to
    O(h_x^2) (the O(h_x) term of the difference enters ||J v||^2 only through a term odd in v).
    Either shares the forward pass with a loss on s.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "method")
    if m is DivergenceMethod.EXACT:
        raise ValueError(
            "score_and_jacobian_frobenius_sq estimates: method must be 'hutchinson' or 'hutchinson-fd'"
        )
    _check_probes(n_probes)
    _check_step("h_x", h_x)
    s, out = _score_and_frobenius(score_fn, x, tt, m, n_probes, probe, generator, h_x)
    return _finish(s, create_graph), _finish(out, create_graph)


def _score_and_frobenius(
    score_fn: ScoreFn, x: Tensor, t: Tensor, method: DivergenceMethod, n_probes: int,
    probe: Probe | str, generator: torch.Generator | None, h_x: float,
) -> tuple[Tensor, Tensor]:
    v = probes(n_probes, x, probe, generator)
    if method is DivergenceMethod.HUTCHINSON_FD:
        s, jv, _ = _probe_fd_jvps(score_fn, x, t, v, h_x)
    else:
        s, jv = _probe_vjps(score_fn, x, t, v)
    return s, jv.reshape(n_probes, x.shape[0], -1).pow(2).sum(-1).mean(0)


def jacobian(
    score_fn: ScoreFn, x: Tensor, t: Tensor | float, *, chunk_size: int | None = None,
    create_graph: bool = False,
) -> Tensor:
    """The full per-sample Jacobian J[b, r, c] = d s_r / d x_c of flattened s, shape (B, D, D).

    Cost: D VJPs (batched). Memory B D^2: meant for small D and for testing the estimators.
    """
    tt = _check_inputs(x, t)
    return _finish(_full_jacobian(score_fn, x, tt, chunk_size), create_graph)


def jacobian_frobenius_sq(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    h_x: float = 1e-3,
    create_graph: bool = False,
) -> Tensor:
    """||J||_F^2 per sample, shape (B,).

    exact: sum_i ||e_i^T J||^2 (D VJPs). hutchinson: 1/K sum_k ||v_k^T J||^2 (K VJPs); unbiased since
    E[v v^T] = I; variance per probe 2 ||J^T J||_F^2 (Gaussian), 2 (||J^T J||_F^2 - sum_i
    (J^T J)_ii^2) (Rademacher). hutchinson-fd: 1/K sum_k ||J v_k||^2 with J v_k by a forward
    difference of step h_x (no VJP); bias O(h_x^2), variance per probe 2 ||J J^T||_F^2 (Gaussian).
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "method")
    _check_probes(n_probes)
    _check_step("h_x", h_x)
    if m is DivergenceMethod.EXACT:
        _, chunks = _basis_rows(score_fn, x, tt, chunk_size)
        out = sum(c.pow(2).sum((0, 2)) for _, c in chunks)
        return _finish(out, create_graph)  # type: ignore[arg-type]
    _, out = _score_and_frobenius(score_fn, x, tt, m, n_probes, probe, generator, h_x)
    return _finish(out, create_graph)


def jacobian_vector_product(
    score_fn: ScoreFn, x: Tensor, t: Tensor | float, v: Tensor, *, create_graph: bool = False
) -> Tensor:
    """J v per sample, shaped like x, by forward-mode AD (one JVP; the double-backward trick for
    layers without forward-mode formulas). Round-off error only: the reference that the
    finite-difference estimators are held against."""
    tt = _check_inputs(x, t)
    if not isinstance(v, Tensor) or v.shape != x.shape:
        raise ValueError(f"v must be shaped like x {tuple(x.shape)}")
    s, jv = _jvp(lambda x_: score_fn(x_, tt), x, v.to(dtype=x.dtype, device=x.device))
    _check_output(s, x)
    return _finish(jv, create_graph)


def jacobian_asymmetry_sq(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> Tensor:
    """||J - J^T||_F^2 per sample, shape (B,): zero exactly when s is locally a gradient field.

    In 2-D this is 2 curl^2 with curl = d_1 s_2 - d_2 s_1.
    exact: from the full Jacobian (D VJPs, memory B D^2).
    hutchinson: with independent probe pairs (u_k, v_k), 1/K sum_k (u^T J v - v^T J u)^2
        (2K VJPs). Unbiased: E[(u^T A v)^2] = ||A||_F^2 for A = J - J^T when E[uu^T] = E[vv^T] = I.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "method")
    if m is DivergenceMethod.HUTCHINSON_FD:
        raise ValueError("jacobian_asymmetry_sq: method must be 'exact' or 'hutchinson'")
    _check_probes(n_probes)
    if m is DivergenceMethod.EXACT:
        jac = _full_jacobian(score_fn, x, tt, chunk_size)
        out = (jac - jac.transpose(1, 2)).pow(2).sum((1, 2))
        return _finish(out, create_graph)
    uv = probes(2 * n_probes, x, probe, generator)
    _, juv = _probe_vjps(score_fn, x, tt, uv)
    k, b = n_probes, x.shape[0]
    u, v = uv[:k].reshape(k, b, -1), uv[k:].reshape(k, b, -1)
    ju, jv = juv[:k].reshape(k, b, -1), juv[k:].reshape(k, b, -1)
    out = ((u * jv).sum(-1) - (v * ju).sum(-1)).pow(2).mean(0)
    return _finish(out, create_graph)


# --------------------------------------------------------------------------------------------
# Time derivative: forward-mode, or finite-difference stencils that stay inside [t_min, T].
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stencil:
    """A finite-difference stencil for d_t s: d_t s(t) ~ sum_j weights[j] s(t + offsets[j]).

    ``order`` is the promised truncation order (error O(h^order)); `scorefpe check` measures it.
    """

    name: str
    offsets: tuple[float, ...]
    weights: tuple[float, ...]
    order: int

    @property
    def reach(self) -> tuple[float, float]:
        """How far below and above t the stencil evaluates the model."""
        return (-min(0.0, *self.offsets), max(0.0, *self.offsets))


def central_stencil(h: float) -> Stencil:
    """(s(t+h) - s(t-h)) / 2h, error h^2/6 s'''."""
    return Stencil("central", (h, -h), (1 / (2 * h), -1 / (2 * h)), 2)


def nonuniform_stencil(h_s: float, h_d: float) -> Stencil:
    """FP-Diffusion App. C.1: [h_s^2 s(t+h_d) + (h_d^2-h_s^2) s(t) - h_d^2 s(t-h_s)] / (h_s h_d (h_s+h_d)).

    Second order: error O(h_s h_d) s'''/6. Equals the central stencil when h_s = h_d.
    """
    den = h_s * h_d * (h_s + h_d)
    return Stencil(
        "nonuniform", (h_d, 0.0, -h_s), (h_s**2 / den, (h_d**2 - h_s**2) / den, -(h_d**2) / den), 2
    )


def forward_stencil(h: float) -> Stencil:
    """One-sided (-3 s(t) + 4 s(t+h) - s(t+2h)) / 2h, second order (error h^2/3 s'''); near t_min."""
    return Stencil("forward", (0.0, h, 2 * h), (-1.5 / h, 2 / h, -0.5 / h), 2)


def backward_stencil(h: float) -> Stencil:
    """One-sided (3 s(t) - 4 s(t-h) + s(t-2h)) / 2h, second order; near T."""
    return Stencil("backward", (0.0, -h, -2 * h), (1.5 / h, -2 / h, 0.5 / h), 2)


STENCILS: dict[str, Callable[..., Stencil]] = {
    "central": central_stencil,
    "nonuniform": nonuniform_stencil,
    "forward": forward_stencil,
    "backward": backward_stencil,
}


def apply_stencil(
    score_fn: ScoreFn, x: Tensor, t: Tensor, st: Stencil, s_at_t: Tensor | None = None
) -> Tensor:
    """The stencil's estimate of d_t s: sum_j w_j s(x, t + o_j) over its (offset, weight) nodes.

    x: (B, ...), t: (B,) in x's dtype/device; returns (B, ...) like x. Cost: one call of
    `score_fn` on a batch of m B points, m = number of nodes with w_j != 0 (minus the offset-0
    node when `s_at_t` is given: s(x, t) the caller already has, then not re-evaluated).
    Truncation error O(h^order) as declared by `st`; no check that t + o_j stays in [t_min, T]
    (`time_derivative` picks one-sided stencils at the ends, use it unless testing a stencil).

    Raises:
        ValueError: `score_fn` returns a tensor not shaped like its input.
    """
    pairs = [(o, w) for o, w in zip(st.offsets, st.weights) if w != 0.0]
    w0 = 0.0
    if s_at_t is not None:
        w0 = sum(w for o, w in pairs if o == 0.0)
        pairs = [(o, w) for o, w in pairs if o != 0.0]
    m = len(pairs)
    tt = torch.cat([t + o for o, _ in pairs])
    out = _check_output(score_fn(_replicate(x, m), tt), _replicate(x, m))
    out = out.reshape(m, *x.shape)
    w = torch.tensor([w for _, w in pairs], dtype=x.dtype, device=x.device)
    res = (w.reshape(m, *([1] * x.dim())) * out).sum(0)
    return res if w0 == 0.0 else res + w0 * s_at_t


def _fd_time_derivative(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    interior: Stencil,
    h: float,
    t_min: float,
    t_max: float,
    s_at_t: Tensor | None = None,
) -> Tensor:
    """d_t s with `interior` where it fits in [t_min, t_max], one-sided stencils elsewhere.

    s_at_t: s(x, t) if already computed (reused for the stencils' offset-0 nodes)."""
    below, above = interior.reach
    fwd, bwd = forward_stencil(h), backward_stencil(h)
    # A small slack so that t exactly at t_min + h counts as inside (round-off in t + o).
    tol = 1e-12 * max(1.0, abs(t_max))
    use_int = (t - below >= t_min - tol) & (t + above <= t_max + tol)
    use_fwd = ~use_int & (t + 2 * h <= t_max + tol)
    use_bwd = ~use_int & ~use_fwd
    if bool((use_bwd & (t - 2 * h < t_min - tol)).any()):
        raise ValueError(
            f"step h={h} is too large for [t_min, T] = [{t_min}, {t_max}]: no stencil fits"
        )
    out = torch.empty_like(x)
    for mask, st in ((use_int, interior), (use_fwd, fwd), (use_bwd, bwd)):
        if bool(mask.any()):
            idx = mask.nonzero().squeeze(1)
            s0 = None if s_at_t is None else s_at_t[idx]
            out = out.index_put((idx,), apply_stencil(score_fn, x[idx], t[idx], st, s0))
    return out


def time_derivative(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    method: TimeMethod | str = TimeMethod.EXACT,
    h: float = 1e-3,
    h_s: float = 1e-3,
    h_d: float = 5e-4,
    t_min: float | None = None,
    t_max: float = 1.0,
    create_graph: bool = False,
) -> Tensor:
    """d_t s(x, t), shaped like x.

    exact: forward-mode AD in t (tangent 1): one JVP, round-off error only.
    central: (s(t+h) - s(t-h)) / 2h, 2 F, error O(h^2).
    nonuniform: FP-Diffusion's (h_s, h_d) stencil, 3 F (2 F when h_s = h_d), error O(h_s h_d).
    For the finite differences, samples whose stencil would leave [t_min, t_max] use the
    second-order one-sided stencil with step h (forward near t_min, backward near t_max), so the
    model is never evaluated outside [t_min, t_max] (the VP std is NaN at t < 0).
    t_min=None (default): the smallest t of the batch, so the stencil never evaluates the model
    below a time the caller asked for (an eps-parameterised network divides by sigma(t), which is
    0 at t = 0 under VP); pass the training t_min to use two-sided stencils down to it.

    Raises:
        ValueError: t outside [t_min, t_max], non-positive steps, or no stencil fits.
    """
    tt = _check_inputs(x, t, 0.0 if t_min is None else t_min, t_max)
    m = parse_choice(TimeMethod, method, "time-derivative method")
    lo = _t_low(tt, t_min)
    return _finish(_time_derivative(score_fn, x, tt, m, h, h_s, h_d, lo, t_max), create_graph)


def _t_low(t: Tensor, t_min: float | None) -> float:
    """The lowest time a stencil may evaluate: t_min, or the batch's smallest t when None."""
    return float(t.min()) if t_min is None else float(t_min)


def _time_derivative(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor,
    method: TimeMethod,
    h: float,
    h_s: float,
    h_d: float,
    t_min: float,
    t_max: float,
    s_at_t: Tensor | None = None,
) -> Tensor:
    for name, val in (("h", h), ("h_s", h_s), ("h_d", h_d)):
        if not (val > 0 and math.isfinite(val)):
            raise ValueError(f"{name} must be positive and finite, got {val!r}")
    if method is TimeMethod.EXACT:
        s, dts = _jvp(lambda t_: score_fn(x, t_), t, torch.ones_like(t))
        _check_output(s, x)
        return dts
    interior = central_stencil(h) if method is TimeMethod.CENTRAL else nonuniform_stencil(h_s, h_d)
    return _fd_time_derivative(score_fn, x, t, interior, h, t_min, t_max, s_at_t)


# --------------------------------------------------------------------------------------------
# The score-FPE operator and residuals.
# --------------------------------------------------------------------------------------------


def _fp_operator(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor,
    method: DivergenceMethod,
    n_probes: int,
    probe: Probe | str,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> Tensor:
    return _fp_operator_and_score(score_fn, sde, x, t, method, n_probes, probe, generator, chunk_size)[0]


def _fp_operator_and_score(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor,
    method: DivergenceMethod,
    n_probes: int,
    probe: Probe | str,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    s, div = _divergence_and_score(score_fn, x, t, method, n_probes, probe, generator, chunk_size)
    g2 = sde.diffusion(t) ** 2
    f = sde.drift(x, t)
    sf, ff = _flat(s), _flat(f)
    lop = 0.5 * g2 * div + 0.5 * g2 * sf.pow(2).sum(-1) - (ff * sf).sum(-1) - sde.div_drift(x, t)
    return lop, s


def fp_operator(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor | float,
    *,
    method: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> Tensor:
    """L[s](x, t) = 1/2 g^2 div_x s + 1/2 g^2 |s|^2 - <f, s> - div_x f, shape (B,).

    For the true score L[s] = d_t log q_t (FP-Diffusion eq. 7): it is not zero, so it is not a
    residual by itself. ``method`` is the divergence's (exact: D VJPs; hutchinson: K VJPs,
    unbiased, variance g^4/4 times the divergence estimator's).
    """
    tt = _check_inputs(x, t, 0.0, sde.T)
    m = parse_choice(DivergenceMethod, method, "divergence method")
    _check_probes(n_probes)
    out = _fp_operator(score_fn, sde, x, tt, m, n_probes, probe, generator, chunk_size)
    return _finish(out, create_graph)


def _score_operator_residual(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor,
    dm: DivergenceMethod,
    n_probes: int,
    probe: Probe | str,
    generator: torch.Generator | None,
    chunk_size: int | None,
    tm: TimeMethod,
    h: float,
    h_s: float,
    h_d: float,
    t_lo: float,
    clock: Callable[[str], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(s, L[s], eps[s]) sharing one VJP pass: its forward output is s, L[s] is built from it,
    grad_x L by a double backward, then d_t s with s reused for the stencil's offset-0 node.
    clock(phase) is called at the end of each phase (profiling)."""
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        lop, s = _fp_operator_and_score(score_fn, sde, xg, t, dm, n_probes, probe, generator, chunk_size)
        if clock is not None:
            clock("forward + VJP for div_x s")
        (grad_l,) = torch.autograd.grad(lop.sum(), xg, create_graph=True)
        if clock is not None:
            clock("double backward for grad_x L")
    dts = _time_derivative(score_fn, x, t, tm, h, h_s, h_d, t_lo, sde.T, s_at_t=s)
    if clock is not None:
        clock("stencil forwards for d_t s")
    return s, lop, dts - grad_l


@dataclass(frozen=True)
class FPResidualEstimator:
    """One way of computing eps[s] = d_t s - grad_x L[s], with its settings, and what it promises.

    Replaces the long keyword lists of `fp_residual` (still accepted, and equivalent): an
    estimator is built once (`exact()`, `estimated(...)`) and called on many batches.
    divergence/time: the methods of div_x s (exact or hutchinson) and of d_t s; n_probes/probe:
    the Hutchinson probes; h, h_s, h_d: the stencil steps; chunk_size: basis vectors per pass of
    the exact divergence.
    """

    divergence: DivergenceMethod = DivergenceMethod.EXACT
    time: TimeMethod = TimeMethod.EXACT
    n_probes: int = 1
    probe: Probe = Probe.GAUSSIAN
    h: float = 1e-3
    h_s: float = 1e-3
    h_d: float = 5e-4
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        dm = parse_choice(DivergenceMethod, self.divergence, "divergence method")
        object.__setattr__(self, "divergence", dm)
        object.__setattr__(self, "time", parse_choice(TimeMethod, self.time, "time-derivative method"))
        object.__setattr__(self, "probe", parse_choice(Probe, self.probe, "probe"))
        if self.divergence is DivergenceMethod.HUTCHINSON_FD:
            raise ValueError("the vector residual differentiates L by autograd: use 'exact' or 'hutchinson'"
                             " (projected_fp_residual is the finite-difference estimator)")
        _check_probes(self.n_probes)
        for name in ("h", "h_s", "h_d"):
            _check_step(name, getattr(self, name))

    @classmethod
    def exact(cls, chunk_size: int | None = None) -> FPResidualEstimator:
        """Forward-mode d_t s, exact divergence: round-off error only; D VJPs per sample."""
        return cls(chunk_size=chunk_size)

    @classmethod
    def estimated(
        cls, n_probes: int = 1, probe: Probe | str = Probe.GAUSSIAN,
        time: TimeMethod | str = TimeMethod.NONUNIFORM, h: float = 1e-3, h_s: float = 1e-3,
        h_d: float = 5e-4,
    ) -> FPResidualEstimator:
        """FP-Diffusion's estimator: finite-difference d_t s, Hutchinson divergence."""
        return cls(DivergenceMethod.HUTCHINSON, parse_choice(TimeMethod, time, "time-derivative method"),
                   n_probes, parse_choice(Probe, probe, "probe"), h, h_s, h_d)

    @property
    def order(self) -> int | None:
        """Truncation order of the d_t s stencil (error O(h^order)); None: round-off only."""
        return None if self.time is TimeMethod.EXACT else 2

    @property
    def unbiased(self) -> bool:
        """Whether E[eps_hat] = eps up to the stencil's truncation (always: grad_x L is linear in
        the divergence estimate). ||eps_hat||^2 is biased up by tr Cov unless the divergence is exact."""
        return True

    @property
    def variance(self) -> str:
        """What the estimate's variance is, in words."""
        if self.divergence is DivergenceMethod.EXACT:
            return "zero (deterministic)"
        return (f"Cov(eps_hat) = g^4/4 Cov(grad_x of the Hutchinson divergence) / {self.n_probes} "
                f"({self.probe.value} probes)")

    def score_operator_residual(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor | float, *,
        generator: torch.Generator | None = None, t_min: float | None = None,
        create_graph: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(s, L[s], eps[s]) as `score_operator_and_fp_residual` with these settings."""
        tt = _check_inputs(x, t, 0.0 if t_min is None else t_min, sde.T)
        s, lop, eps = _score_operator_residual(
            score_fn, sde, x, tt, self.divergence, self.n_probes, self.probe, generator,
            self.chunk_size, self.time, self.h, self.h_s, self.h_d, _t_low(tt, t_min),
        )
        return _finish(s, create_graph), _finish(lop, create_graph), _finish(eps, create_graph)

    def residual(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor | float, *,
        generator: torch.Generator | None = None, t_min: float | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        """eps[s](x, t), shaped like x, as `fp_residual` with these settings."""
        return self.score_operator_residual(score_fn, sde, x, t, generator=generator, t_min=t_min,
                                            create_graph=create_graph)[2]


def _residual_estimator(
    method: ResidualMethod | str, time_method: TimeMethod | str | None, n_probes: int,
    probe: Probe | str, h: float, h_s: float, h_d: float, chunk_size: int | None,
) -> FPResidualEstimator:
    m = parse_choice(ResidualMethod, method, "residual method")
    if time_method is None:
        tm = TimeMethod.EXACT if m is ResidualMethod.EXACT else TimeMethod.NONUNIFORM
    else:
        tm = parse_choice(TimeMethod, time_method, "time-derivative method")
    dm = DivergenceMethod.EXACT if m is ResidualMethod.EXACT else DivergenceMethod.HUTCHINSON
    return FPResidualEstimator(dm, tm, n_probes, parse_choice(Probe, probe, "probe"), h, h_s, h_d, chunk_size)


def fp_residual(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor | float,
    *,
    method: ResidualMethod | str = ResidualMethod.EXACT,
    time_method: TimeMethod | str | None = None,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    h: float = 1e-3,
    h_s: float = 1e-3,
    h_d: float = 5e-4,
    t_min: float | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> Tensor:
    """Vector score-FPE residual eps[s] = d_t s - grad_x L[s] (FP-Diffusion eq. 9), shaped like x.

    exact (default): d_t s by forward-mode AD, div_x s exactly (D VJPs), grad_x L by reverse
        mode. Cost: one JVP in t, D VJPs, one backward through them. Round-off error only.
    estimated: d_t s by finite differences (``time_method``, default FP-Diffusion's nonuniform
        (h_s, h_d) stencil, one-sided near t_min and T) and div_x s by Hutchinson with
        ``n_probes`` probes, then grad_x L by reverse mode. Unbiased for eps up to the O(h^2)
        stencil error, since grad_x L is linear in the divergence estimate; its square is
        biased upwards by the estimator's variance (E||eps_hat||^2 = ||eps||^2 + tr Cov).

    ``time_method`` overrides the d_t s method of either mode. The model is evaluated only in
    [t_min, sde.T]; t_min=None (default) means the smallest t of the batch, which is safe for
    every SDE and every parameterisation (an eps-network at t = 0 is not); pass the training
    t_min to allow two-sided stencils below the batch's smallest t.

    Raises:
        ValueError: bad shapes, NaN/inf, t outside [t_min, T], unknown methods.
    """
    s, eps = score_and_fp_residual(
        score_fn, sde, x, t, method=method, time_method=time_method, n_probes=n_probes,
        probe=probe, generator=generator, h=h, h_s=h_s, h_d=h_d, t_min=t_min,
        chunk_size=chunk_size, create_graph=create_graph,
    )
    return eps


def score_and_fp_residual(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor | float,
    *,
    method: ResidualMethod | str = ResidualMethod.EXACT,
    time_method: TimeMethod | str | None = None,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    h: float = 1e-3,
    h_s: float = 1e-3,
    h_d: float = 5e-4,
    t_min: float | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """(s(x, t), eps[s](x, t)): `fp_residual` with the score it evaluated on the way.

    Same arguments and estimator as `fp_residual`. The VJP pass for div_x s yields s(x, t) as its
    forward output; it is reused for the finite-difference stencils' offset-0 node (FP-Diffusion's
    nonuniform stencil then costs 2 F, not 3 F) and returned, so a training step that also needs
    s(x, t) for the DSM term saves that forward and its backward too.
    """
    s, _, eps = score_operator_and_fp_residual(
        score_fn, sde, x, t, method=method, time_method=time_method, n_probes=n_probes,
        probe=probe, generator=generator, h=h, h_s=h_s, h_d=h_d, t_min=t_min,
        chunk_size=chunk_size, create_graph=create_graph,
    )
    return s, eps


def score_operator_and_fp_residual(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor | float,
    *,
    method: ResidualMethod | str = ResidualMethod.EXACT,
    time_method: TimeMethod | str | None = None,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    h: float = 1e-3,
    h_s: float = 1e-3,
    h_d: float = 5e-4,
    t_min: float | None = None,
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(s(x, t), L[s](x, t), eps[s](x, t)) from one VJP pass: `score_and_fp_residual` with the
    operator L[s] (shape (B,)) that the residual differentiates, on the same divergence estimate
    (same probes). FP-Diffusion's regulariser needs both; this costs what `fp_residual` costs.
    """
    _check_inputs(x, t, 0.0 if t_min is None else t_min, sde.T)  # input errors before settings
    est = _residual_estimator(method, time_method, n_probes, probe, h, h_s, h_d, chunk_size)
    return est.score_operator_residual(score_fn, sde, x, t, generator=generator, t_min=t_min,
                                       create_graph=create_graph)


def fp_residual_phase_times(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor,
    *,
    generator: torch.Generator | None = None,
    t_min: float | None = None,
    sync: Callable[[], None] | None = None,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """The estimated residual of `score_and_fp_residual(method="estimated")` (graph kept), with
    the wall-clock seconds of its phases: the forward and VJP for div_x s, the double backward
    for grad_x L, the stencil's forwards for d_t s. Returns (s, eps, {phase: seconds}); the
    caller times what comes after (the backward of the loss through all of it). sync: called
    before each clock reading (torch.cuda.synchronize on CUDA)."""
    import time

    tt = _check_inputs(x, t, 0.0 if t_min is None else t_min, sde.T)
    times: dict[str, float] = {}
    last = [time.perf_counter()]

    def clock(phase: str) -> None:
        if sync is not None:
            sync()
        now = time.perf_counter()
        times[phase] = now - last[0]
        last[0] = now

    if sync is not None:
        sync()
    last[0] = time.perf_counter()
    s, _, eps = _score_operator_residual(
        score_fn, sde, x, tt, DivergenceMethod.HUTCHINSON, 1, Probe.GAUSSIAN, generator, None,
        TimeMethod.NONUNIFORM, 1e-3, 1e-3, 5e-4, _t_low(tt, t_min), clock,
    )
    return s, eps, times


# --------------------------------------------------------------------------------------------
# The projected residual <eps, v> by finite differences in x (FP-Diffusion App. C.4).
# --------------------------------------------------------------------------------------------


def _projected_parts(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor,
    u: Tensor,
    v: Tensor,
    h_x: float,
    tm: TimeMethod,
    h: float,
    h_s: float,
    h_d: float,
    t_lo: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(s (B, ...), L_hat(x) (B,), <eps_hat, v_k> (K, B)) for divergence probes u and projection
    probes v, both (K, B, ...): see `score_and_projected_fp_residual`."""
    k, b = v.shape[0], x.shape[0]
    xv = x.unsqueeze(0) + h_x * v
    rows = torch.cat([
        x, (x.unsqueeze(0) + h_x * u).reshape(k * b, *x.shape[1:]),
        xv.reshape(k * b, *x.shape[1:]), (xv + h_x * u).reshape(k * b, *x.shape[1:]),
    ])
    out = _check_output(score_fn(rows, t.repeat(3 * k + 1)), rows)
    s = out[:b]
    s_u, s_v, s_vu = out[b:].reshape(3, k, *x.shape).unbind(0)
    g2 = sde.diffusion(t)
    g2 = (g2 * g2).unsqueeze(0)  # (1, B)

    def lop_hat(y: Tensor, sy: Tensor, syu: Tensor) -> Tensor:
        """L at y (K, B, ...) with the divergence u^T (s(y + h_x u) - s(y)) / h_x; div_x f is
        left out: it is constant in x for the linear SDEs and cancels in the difference."""
        div = (u * (syu - sy)).reshape(k, b, -1).sum(-1) / h_x
        f = sde.drift(y.reshape(k * b, *x.shape[1:]), t.repeat(k)).reshape(k, b, -1)
        syf = sy.reshape(k, b, -1)
        return 0.5 * g2 * div + 0.5 * g2 * syf.pow(2).sum(-1) - (f * syf).sum(-1)

    s0 = s.unsqueeze(0).expand(k, *x.shape)
    l0 = lop_hat(x.unsqueeze(0).expand(k, *x.shape), s0, s_u)
    l1 = lop_hat(xv, s_v, s_vu)
    dts = _time_derivative(score_fn, x, t, tm, h, h_s, h_d, t_lo, sde.T, s_at_t=s)
    proj_t = (v.reshape(k, b, -1) * _flat(dts).unsqueeze(0)).sum(-1)
    lop = l0.mean(0) - sde.div_drift(x, t)
    return s, lop, proj_t - (l1 - l0) / h_x


def score_and_projected_fp_residual(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor | float,
    *,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    h_x: float = 3e-3,
    time_method: TimeMethod | str = TimeMethod.NONUNIFORM,
    h: float = 1e-3,
    h_s: float = 1e-3,
    h_d: float = 5e-4,
    t_min: float | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(s(x, t), L_hat[s](x, t), <eps_hat, v_k>) with no derivative of the network: the projected
    score-FPE residual of FP-Diffusion App. C.4 (eq. 24), <eps, v> = <d_t s, v> - D_v L[s],
    by finite differences in x.

    With probes u_k (for the divergence) and v_k (the projection), K = n_probes of each, drawn
    in that order from ``generator``, and step h_x:
        L_hat(y)     = 1/2 g^2 <u, s(y + h_x u) - s(y)> / h_x + 1/2 g^2 |s(y)|^2 - <f, s(y)> - div f
        <eps_hat, v> = <d_t s, v> - (L_hat(x + h_x v) - L_hat(x)) / h_x
    d_t s by ``time_method`` (FP-Diffusion's nonuniform stencil by default, one-sided near t_min
    and T, s(x, t) reused for its offset-0 node). Shapes: s like x, L_hat (B,) (averaged over the
    K probes u_k), projections (K, B).

    What it estimates: E_v <eps, v>^2 = ||eps||^2 for E[v v^T] = I, so 1/K sum_k <eps_hat, v_k>^2
    is the FP penalty ||eps||^2 without grad_x L; E_u L_hat = L up to O(h_x^2) (as
    ``divergence(method="hutchinson-fd")``). Per probe the error of the x-differences is O(h_x)
    (u^T D^2 s[u, v] ... terms, odd in u or v), so the bias of E <eps_hat, v>^2 is
    O(h_x^2) + O(h^2) (stencil) on top of the variance that any probe estimate adds (as for
    the estimated `fp_residual`, whose square is biased up by tr Cov). Float32 round-off of the
    mixed difference grows like eps_32 |s| / h_x^2, the truncation like h_x; the default 3e-3
    is where the two meet on the papers' U-Net (per-probe error against the autograd projection
    ~5e-3 relative; `scorefpe bench penalties` reports it on every run).

    Cost: one call of score_fn on (3K + 1) B rows plus the stencil's other nodes (2 B for the
    nonuniform and central stencils), no VJP: a training step's backward traverses plain
    forward rows only (6 rows per sample for K = 1, about 6x a DSM step; the autograd residual
    needs a VJP and a double backward, about 10x).

    Raises:
        ValueError: bad shapes, NaN/inf, t outside [t_min, T], non-positive steps.
    """
    tt = _check_inputs(x, t, 0.0 if t_min is None else t_min, sde.T)
    _check_probes(n_probes)
    _check_step("h_x", h_x)
    tm = parse_choice(TimeMethod, time_method, "time-derivative method")
    u = probes(n_probes, x, probe, generator)
    v = probes(n_probes, x, probe, generator)
    s, lop, r = _projected_parts(score_fn, sde, x, tt, u, v, h_x, tm, h, h_s, h_d, _t_low(tt, t_min))
    return _finish(s, create_graph), _finish(lop, create_graph), _finish(r, create_graph)


def projected_fp_residual(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: Tensor | float,
    *,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    h_x: float = 3e-3,
    time_method: TimeMethod | str = TimeMethod.NONUNIFORM,
    h: float = 1e-3,
    h_s: float = 1e-3,
    h_d: float = 5e-4,
    t_min: float | None = None,
    create_graph: bool = False,
) -> Tensor:
    """<eps_hat, v_k>, shape (K, B): `score_and_projected_fp_residual` without s and L_hat."""
    return score_and_projected_fp_residual(
        score_fn, sde, x, t, n_probes=n_probes, probe=probe, generator=generator, h_x=h_x,
        time_method=time_method, h=h, h_s=h_s, h_d=h_d, t_min=t_min, create_graph=create_graph,
    )[2]


# --------------------------------------------------------------------------------------------
# Anchor-style references: the straightforward implementation of the field (FP-Diffusion's
# losses), kept to time against and to check that the fast paths compute the same quantity.
# --------------------------------------------------------------------------------------------


def _anchor_vjp(score_fn: ScoreFn, x: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = _check_output(score_fn(xg, t), xg)
        (g,) = torch.autograd.grad((s * v).sum(), xg, create_graph=True)
    return xg, s, g


def anchor_divergence(score_fn: ScoreFn, x: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """Hutchinson v^T J v as the field writes it: its own forward of s at x (not shared with a DSM
    term), grad_x <s, v> with create_graph, <., v>. Shape (B,), graph kept. v: one probe, like x."""
    _, _, g = _anchor_vjp(score_fn, x, _as_time(t, x), v)
    return _flat(g * v).sum(-1)


def anchor_jacobian_frobenius_sq(score_fn: ScoreFn, x: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """||v^T J||^2 as the field writes it (own forward, grad with create_graph). Shape (B,)."""
    _, _, g = _anchor_vjp(score_fn, x, _as_time(t, x), v)
    return _flat(g).pow(2).sum(-1)


def anchor_fp_residual(
    score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor, v: Tensor, *, t_min: float | None = None,
    h_s: float = 1e-3, h_d: float = 5e-4,
) -> Tensor:
    """eps_hat as FP-Diffusion's losses compute it: s at x by its own forward, Hutchinson
    divergence with probe v by autograd, L[s], grad_x L by autograd (create_graph), d_t s by the
    nonuniform (h_s, h_d) stencil evaluated at all three of its nodes (no reuse of s(x, t);
    one-sided near t_min and T as in `fp_residual`). Shaped like x, graph kept. The same
    quantity as `fp_residual(method="estimated")` with the same probe."""
    tt = _as_time(t, x)
    xg, s, g = _anchor_vjp(score_fn, x, tt, v)
    with torch.enable_grad():
        div = _flat(g * v).sum(-1)
        g2 = sde.diffusion(tt) ** 2
        sf, ff = _flat(s), _flat(sde.drift(xg, tt))
        lop = 0.5 * g2 * div + 0.5 * g2 * sf.pow(2).sum(-1) - (ff * sf).sum(-1) - sde.div_drift(xg, tt)
        (grad_l,) = torch.autograd.grad(lop.sum(), xg, create_graph=True)
    dts = _fd_time_derivative(score_fn, x, tt, nonuniform_stencil(h_s, h_d), h_s,
                              _t_low(tt, t_min), sde.T)
    return dts - grad_l


def scalar_fp_residual(
    score_fn: ScoreFn,
    log_prob_fn: LogProbFn,
    sde: SDE,
    x: Tensor,
    t: Tensor | float,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Scalar score-FPE residual d_t log q_t(x) - L[s](x, t), shape (B,) (FP-Diffusion eq. 7).

    Needs the log-density ``log_prob_fn(x, t) -> (B,)`` (a closed form, or a likelihood model);
    d_t log q by forward-mode AD, L[s] with the exact divergence. Zero for the true score; the
    only place where div_x f matters.
    """
    tt = _check_inputs(x, t, 0.0, sde.T)
    lp, dt_lp = _jvp(lambda t_: log_prob_fn(x, t_), tt, torch.ones_like(tt))
    if lp.shape != (x.shape[0],):
        raise ValueError(f"log_prob_fn must return shape (B,) = ({x.shape[0]},); got {tuple(lp.shape)}")
    lop = _fp_operator(score_fn, sde, x, tt, DivergenceMethod.EXACT, 1, Probe.GAUSSIAN, None, chunk_size)
    return (dt_lp - lop).detach()
