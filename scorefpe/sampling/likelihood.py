"""Log-likelihood of a score model by the probability-flow ODE (Song et al. 2021, App. D.2).

With the probability-flow drift f~(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t) and x(t) solving
dx/dt = f~ from x(t_min) = x up to T,

    log p_{t_min}(x) = log p_T(x(T)) + int_{t_min}^T div_x f~(x(t), t) dt,
    div_x f~ = div_x f - 1/2 g^2 div_x s.

p_T is the SDE's prior N(0, prior_std^2 I) unless another ``prior_log_prob`` is given (a test
can pass the exact q_T, and then the ODE reproduces log q_{t_min} up to the solver tolerance).
The result is the density at t_min (not at 0): for a model trained on t in [t_min, T] that is
the density it defines. div_x s comes from `scorefpe.operators.score_and_divergence` (exact:
D VJPs per right-hand-side evaluation, for low D; or Hutchinson with probes held fixed over one
solve, as FFJORD does: a probe redrawn at every evaluation would make the right-hand side random
and the adaptive solver meaningless).

Hutchinson probes. With the probes v fixed over a solve and the path x(t) independent of them,
the estimate of the integral is int 1/2 g^2 v^T J v dt = v^T M v with M = int 1/2 g^2 J dt along
the path, so log p_hat - log p = tr M - v^T M v: unbiased for both probe kinds
(E[v v^T] = I), with variance per point (the operators' formulas, `docs/operators.md`)

    Gaussian v ~ N(0, I):      2 ||M_sym||_F^2 / K
    Rademacher v_i = +-1:      2 (||M_sym||_F^2 - sum_i M_ii^2) / K,   M_sym = (M + M^T) / 2.

Rademacher is never worse and is the default: it drops the diagonal's share of the variance
(for a diagonal M it is exact); Gaussian stays available (``probe="gaussian"``), e.g. to
reproduce numbers computed with it.

The solver is `scipy.integrate.solve_ivp` on the whole batch flattened to one float64 vector:
one step size is shared by the batch, so at loose tolerances a point's value depends slightly
on its batch-mates. Record rtol, atol and nfe with any number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from scorefpe import operators
from scorefpe._util import parse_choice
from scorefpe.operators import DivergenceMethod, Probe
from scorefpe.sampling.samplers import ODE_METHODS, check_ode_options
from scorefpe.sde import SDE, bcast

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["LikelihoodResult", "ODE_METHODS", "log_likelihood", "probability_flow_likelihood"]


@dataclass(frozen=True)
class LikelihoodResult:
    """log p_{t_min}(x) per point (B,), the prior part log p_T(x(T)) (B,), the integral of
    div f~ (B,), x(T) (B, ...), and nfe = right-hand-side evaluations summed over batches
    (each costs one divergence: D JVPs exact, n_probes JVPs Hutchinson)."""

    log_prob: Tensor
    prior_log_prob: Tensor
    delta: Tensor
    x_T: Tensor
    nfe: int


def _check_args(sde: SDE, x: Tensor, t_min: float, rtol: float, atol: float, method: str,
                batch_size: int | None) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a tensor of shape (B, ...) with B >= 1, got {getattr(x, 'shape', x)!r}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    if not (isinstance(t_min, (int, float)) and 0 < t_min < sde.T):
        raise ValueError(f"t_min must lie in (0, T={sde.T}), got {t_min!r}")
    check_ode_options(rtol, atol, method)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def probability_flow_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    t_min: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    divergence: DivergenceMethod | str = DivergenceMethod.EXACT,
    n_probes: int = 1,
    probe: Probe | str = Probe.RADEMACHER,
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[Tensor], Tensor] | None = None,
    batch_size: int | None = None,
) -> LikelihoodResult:
    """log p_{t_min}(x) of the model ``score_fn`` by the probability-flow ODE (module docstring).

    Args:
        score_fn: s(x, t), x (B, ...) and t (B,) in x's dtype; evaluated in x's dtype.
        x: points (B, ...) at which the density is evaluated (they are the ODE's start values).
        t_min: start time of the ODE (the model's smallest training time).
        rtol, atol: solve_ivp tolerances on the joint state (x, integral).
        method: 'RK45' (Dormand-Prince 5(4)), 'RK23' or 'DOP853'.
        divergence: 'exact' (D VJPs per evaluation, error: round-off) or 'hutchinson'
            (n_probes probes held fixed for the whole solve, n_probes VJPs per evaluation). The
            path x(t) does not depend on the probes, so the estimate is unbiased.
        probe: Hutchinson probe distribution, 'rademacher' (default) or 'gaussian'; variance
            per point 2 (||M_sym||_F^2 - sum_i M_ii^2) / n_probes and 2 ||M_sym||_F^2 / n_probes,
            M = int 1/2 g^2 J(x(t), t) dt (module docstring). Unused when exact.
        generator: draws the Hutchinson probes (unused when exact; None: torch's global RNG).
        prior_log_prob: log p_T; default ``sde.prior_log_prob``.
        batch_size: solve in chunks of this many points (None: one solve).

    Returns:
        LikelihoodResult; nats, not bits.

    Raises:
        ValueError: bad arguments, or unknown divergence method / ODE method.
        RuntimeError: the solver failed (its message is included).
    """
    _check_args(sde, x, t_min, rtol, atol, method, batch_size)
    div_method = parse_choice(DivergenceMethod, divergence, "divergence method")
    probe_kind = parse_choice(Probe, probe, "probe")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    prior = prior_log_prob if prior_log_prob is not None else sde.prior_log_prob
    # Probe seeds come from `generator`; None: torch's global RNG (pass one to reproduce).
    gen0 = generator
    dtype, device = x.dtype, x.device
    n = x.shape[0]
    bs = n if batch_size is None else batch_size
    outs_lp, outs_prior, outs_delta, outs_xT = [], [], [], []
    nfe = 0
    for lo in range(0, n, bs):
        xb = x[lo: lo + bs].detach()
        shape = xb.shape
        b = shape[0]
        nx = xb.numel()
        # One probe seed per solve: every evaluation re-draws the same probes.
        seed = (int(torch.randint(0, 2**62, (1,), generator=gen0).item())
                if div_method is DivergenceMethod.HUTCHINSON else 0)

        def rhs(t: float, y: np.ndarray, _shape=shape, _b=b, _nx=nx, _seed=seed) -> np.ndarray:
            xt = torch.from_numpy(y[:_nx]).reshape(_shape).to(dtype=dtype, device=device)
            tt = torch.full((_b,), float(t), dtype=dtype, device=device)
            gen = torch.Generator(device=device).manual_seed(_seed)
            s, div_s = operators.score_and_divergence(
                score_fn, xt, tt, method=div_method, n_probes=n_probes, probe=probe_kind,
                generator=gen)
            g2 = sde.diffusion(tt) ** 2
            dx = sde.drift(xt, tt) - 0.5 * bcast(g2, xt) * s
            ddelta = sde.div_drift(xt, tt) - 0.5 * g2 * div_s
            return torch.cat([dx.reshape(-1), ddelta.reshape(-1)]).detach().to(
                "cpu", torch.float64).numpy()

        y0 = np.concatenate([xb.to("cpu", torch.float64).numpy().ravel(), np.zeros(b)])
        sol = solve_ivp(rhs, (t_min, sde.T), y0, method=method, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
        nfe += int(sol.nfev)
        yT = torch.from_numpy(sol.y[:, -1].copy())
        xT = yT[:nx].reshape(shape).to(dtype=torch.float64)
        delta = yT[nx:]
        lp_T = prior(xT).to(torch.float64)
        outs_lp.append(lp_T + delta)
        outs_prior.append(lp_T)
        outs_delta.append(delta)
        outs_xT.append(xT)
    return LikelihoodResult(torch.cat(outs_lp), torch.cat(outs_prior), torch.cat(outs_delta),
                            torch.cat(outs_xT), nfe)


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    t_min: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    n_probes: int | None = None,
    probe: Probe | str = Probe.RADEMACHER,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log p_{t_min}(x), shape (B,), float64: `probability_flow_likelihood` with the exact
    divergence when ``n_probes`` is None, else Hutchinson with ``n_probes`` fixed probes of the
    kind ``probe`` (Rademacher by default: lower variance, see the module docstring).
    Use `probability_flow_likelihood` to also get nfe and the prior / integral parts.

    Raises:
        ValueError, RuntimeError: as `probability_flow_likelihood`.
    """
    res = probability_flow_likelihood(
        score_fn, sde, x, t_min=t_min, rtol=rtol, atol=atol, method=method,
        divergence="exact" if n_probes is None else "hutchinson",
        n_probes=1 if n_probes is None else n_probes, probe=probe, generator=generator,
    )
    return res.log_prob
