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
    "Probe",
    "ResidualMethod",
    "Stencil",
    "STENCILS",
    "TimeMethod",
    "apply_stencil",
    "divergence",
    "fp_operator",
    "fp_residual",
    "jacobian",
    "jacobian_asymmetry_sq",
    "jacobian_diagonal",
    "jacobian_frobenius_sq",
    "probes",
    "scalar_fp_residual",
    "score_and_divergence",
    "score_and_fp_residual",
    "score_and_jacobian_frobenius_sq",
    "time_derivative",
]


class DivergenceMethod(str, Enum):
    """How a trace-type quantity of J is computed: exactly (D VJPs) or by Hutchinson probes."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"


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
) -> tuple[Tensor, Tensor]:
    if method is DivergenceMethod.EXACT:
        s, diag = _diagonal_and_score(score_fn, x, t, method, n_probes, probe, generator, chunk_size)
        return s, _flat(diag).sum(-1)
    v = probes(n_probes, x, probe, generator)
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
    create_graph: bool = False,
) -> Tensor:
    """div_x s(x, t) = tr J, shape (B,).

    exact: sum_i (e_i^T J)_i over the D basis vectors: D VJPs, batched as one evaluation on a
        (D * B)-row replicated batch (``chunk_size`` basis vectors at a time to bound memory).
        Error: float round-off.
    hutchinson: 1/K sum_k v_k^T J v_k with K = n_probes probes (one VJP each, batched). Unbiased;
        variance per probe 2 ||J_sym||_F^2 (Gaussian) or 2 (||J_sym||_F^2 - sum_i J_ii^2)
        (Rademacher), J_sym = (J + J^T) / 2; divided by K.

    Raises:
        ValueError: bad shapes, NaN/inf input, unknown method/probe, n_probes < 1, or a score_fn
            whose output is not shaped like x.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "divergence method")
    _check_probes(n_probes)
    _, div = _divergence_and_score(score_fn, x, tt, m, n_probes, probe, generator, chunk_size)
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
    create_graph: bool = False,
) -> Tensor:
    """The diagonal of the Jacobian, d s_i / d x_i, shaped like x: the pixel-wise contributions
    to div_x s (2026 paper, Figs. 2-5). Summed over entries it is `divergence`.

    exact: (e_i^T J)_i for the D basis vectors: D VJPs (batched, ``chunk_size`` at a time).
        Error: float round-off.
    hutchinson: 1/K sum_k v_k * (J^T v_k) (elementwise; Bekas, Kokiopoulou & Saad 2007), K VJPs.
        Unbiased, since E[v_i v_r] = delta_ir. Variance per probe and entry:
        sum_{r != i} J_ri^2 (Rademacher), J_ii^2 + sum_r J_ri^2 (Gaussian); divided by K.

    Raises:
        ValueError: as `divergence`.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "method")
    _check_probes(n_probes)
    _, diag = _diagonal_and_score(score_fn, x, tt, m, n_probes, probe, generator, chunk_size)
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
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """(s(x, t), div_x s) from one pass: the VJP's forward output is the score itself.

    Same estimator and arguments as `divergence`. A training step that needs both the DSM term
    and a divergence penalty saves one forward pass (and its backward) by calling this.
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "divergence method")
    _check_probes(n_probes)
    s, div = _divergence_and_score(score_fn, x, tt, m, n_probes, probe, generator, chunk_size)
    return _finish(s, create_graph), _finish(div, create_graph)


def score_and_jacobian_frobenius_sq(
    score_fn: ScoreFn,
    x: Tensor,
    t: Tensor | float,
    *,
    n_probes: int = 1,
    probe: Probe | str = Probe.GAUSSIAN,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """(s(x, t), Hutchinson ||J||_F^2 = 1/K sum_k ||v_k^T J||^2) from one VJP pass.

    Same estimator as `jacobian_frobenius_sq(method="hutchinson")`; shares the forward pass
    with a loss on s.
    """
    tt = _check_inputs(x, t)
    _check_probes(n_probes)
    v = probes(n_probes, x, probe, generator)
    s, jv = _probe_vjps(score_fn, x, tt, v)
    out = jv.reshape(n_probes, x.shape[0], -1).pow(2).sum(-1).mean(0)
    return _finish(s, create_graph), _finish(out, create_graph)


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
    create_graph: bool = False,
) -> Tensor:
    """||J||_F^2 per sample, shape (B,).

    exact: sum_i ||e_i^T J||^2 (D VJPs). hutchinson: 1/K sum_k ||v_k^T J||^2 (K VJPs); unbiased since
    E[v v^T] = I; variance per probe 2 ||J^T J||_F^2 (Gaussian), 2 (||J^T J||_F^2 - sum_i
    (J^T J)_ii^2) (Rademacher).
    """
    tt = _check_inputs(x, t)
    m = parse_choice(DivergenceMethod, method, "method")
    _check_probes(n_probes)
    if m is DivergenceMethod.EXACT:
        _, chunks = _basis_rows(score_fn, x, tt, chunk_size)
        out = sum(c.pow(2).sum((0, 2)) for _, c in chunks)
        return _finish(out, create_graph)  # type: ignore[arg-type]
    v = probes(n_probes, x, probe, generator)
    _, jv = _probe_vjps(score_fn, x, tt, v)
    out = jv.reshape(n_probes, x.shape[0], -1).pow(2).sum(-1).mean(0)
    return _finish(out, create_graph)


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
    t_min: float = 0.0,
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

    Raises:
        ValueError: t outside [t_min, t_max], non-positive steps, or no stencil fits.
    """
    tt = _check_inputs(x, t, t_min, t_max)
    m = parse_choice(TimeMethod, method, "time-derivative method")
    return _finish(_time_derivative(score_fn, x, tt, m, h, h_s, h_d, t_min, t_max), create_graph)


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
    t_min: float = 0.0,
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
    [t_min, sde.T].

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
    t_min: float = 0.0,
    chunk_size: int | None = None,
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """(s(x, t), eps[s](x, t)): `fp_residual` with the score it evaluated on the way.

    Same arguments and estimator as `fp_residual`. The VJP pass for div_x s yields s(x, t) as its
    forward output; it is reused for the finite-difference stencils' offset-0 node (FP-Diffusion's
    nonuniform stencil then costs 2 F, not 3 F) and returned, so a training step that also needs
    s(x, t) for the DSM term saves that forward and its backward too.
    """
    tt = _check_inputs(x, t, t_min, sde.T)
    m = parse_choice(ResidualMethod, method, "residual method")
    _check_probes(n_probes)
    if time_method is None:
        tm = TimeMethod.EXACT if m is ResidualMethod.EXACT else TimeMethod.NONUNIFORM
    else:
        tm = parse_choice(TimeMethod, time_method, "time-derivative method")
    dm = DivergenceMethod.EXACT if m is ResidualMethod.EXACT else DivergenceMethod.HUTCHINSON
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        lop, s = _fp_operator_and_score(score_fn, sde, xg, tt, dm, n_probes, probe, generator, chunk_size)
        (grad_l,) = torch.autograd.grad(lop.sum(), xg, create_graph=True)
    dts = _time_derivative(score_fn, x, tt, tm, h, h_s, h_d, t_min, sde.T, s_at_t=s)
    return _finish(s, create_graph), _finish(dts - grad_l, create_graph)


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
