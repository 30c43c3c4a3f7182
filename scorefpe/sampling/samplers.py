"""Samplers of the reverse-time process for any score model `score_fn(x, t)` (Song et al. 2021).

Three samplers integrate from t = T down to t = t_min (the "eps" of Song et al.), starting from
the SDE's prior N(0, prior_std^2 I):

- `euler_maruyama`: the reverse SDE dx = [f - g^2 s] dt + g dw_bar, Euler-Maruyama steps.
- `predictor_corrector`: Song et al.'s PC sampler (their Algorithms 2/3): a predictor step
  (reverse diffusion, or Euler-Maruyama) and a Langevin corrector whose step is set by a
  signal-to-noise ratio `snr`.
- `probability_flow_ode`: the probability-flow ODE dx/dt = f - 1/2 g^2 s, solved by an adaptive
  explicit Runge-Kutta method of `scipy.integrate.solve_ivp` on flattened float64 arrays.

All three return a `SampleResult(samples, nfe)` (nfe = number of score evaluations), take a
`torch.Generator` for every random draw (so a seed reproduces the samples, given the same
`batch_size`), split the requested batch into chunks of `batch_size`, and show a tqdm bar when
`progress=True`. Sampling runs under `torch.no_grad()`.

`probability_flow_drift` (f - 1/2 g^2 s) is public so that the likelihood computation can share it.

Shapes: `shape` is (N, ...) like the data (e.g. (N, 2) or (N, 1, 28, 28)); `score_fn` gets x of
shape (B, ...) and t of shape (B,) in the sampling dtype and device, and must return a tensor
shaped like x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from scorefpe._util import parse_choice
from scorefpe.sde import SDE, bcast

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "ODE_METHODS",
    "Predictor",
    "check_ode_options",
    "SAMPLERS",
    "SampleResult",
    "euler_maruyama",
    "get_sampler",
    "predictor_corrector",
    "probability_flow_drift",
    "probability_flow_ode",
    "reverse_diffusion",
]


@dataclass(frozen=True)
class SampleResult:
    """Samples at t = t_min, shape (N, ...), and the number of score evaluations per sample path.

    nfe counts calls of `score_fn` summed over the batches (for the ODE it is the solver's
    function-evaluation count, which depends on rtol/atol and on the batch-mates, see
    `probability_flow_ode`).
    """

    samples: Tensor
    nfe: int


class Predictor(Enum):
    """Predictor of the PC sampler.

    REVERSE_DIFFUSION: Song et al.'s reverse-diffusion predictor, built on the exact forward
      transition over one step, x(t) = alpha x(t-h) + sqrt(G2) z with alpha = a(t)/a(t-h) and
      G2 = v(t) - alpha^2 v(t-h); the step is x <- (2 - alpha) x + G2 s + sqrt(G2) z. For VE this
      is G2 = sigma(t)^2 - sigma(t-h)^2 and for VP the DDPM step, as in their code.
    EULER_MARUYAMA: x <- x - h (f - g^2 s) + g sqrt(h) z.
    """

    REVERSE_DIFFUSION = "reverse_diffusion"
    EULER_MARUYAMA = "euler_maruyama"


ODE_METHODS = ("RK45", "RK23", "DOP853")


def check_ode_options(rtol: float, atol: float, method: str) -> None:
    """Validate the `scipy.integrate.solve_ivp` settings shared by the probability-flow sampler
    and the likelihood computation.

    Raises:
        ValueError: rtol or atol not a finite number > 0, or `method` not in ODE_METHODS (the
            message names the bad value and the valid choices).
    """
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and math.isfinite(tol)
                                         and tol > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {tol!r}")
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {list(ODE_METHODS)}")


# --------------------------------------------------------------------------------------------
# Drifts
# --------------------------------------------------------------------------------------------
def probability_flow_drift(score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
    """Drift of the probability-flow ODE, f(x, t) - 1/2 g(t)^2 s(x, t), shaped like x.

    x: (B, ...), t: (B,) in the same dtype/device. Cost: one evaluation of `score_fn`. No
    `no_grad` here: the likelihood computation differentiates through it.
    """
    g2 = sde.diffusion(t) ** 2
    return sde.drift(x, t) - 0.5 * bcast(g2, x) * score_fn(x, t)


# --------------------------------------------------------------------------------------------
# Validation helpers (one place for every sampler)
# --------------------------------------------------------------------------------------------
def _check_common(
    sde: SDE, shape: tuple[int, ...] | None, x_T: Tensor | None, t_min: float, batch_size: int | None
) -> tuple[int, ...]:
    if x_T is not None:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_T.shape {tuple(x_T.shape)}")
        shape = tuple(x_T.shape)
    if shape is None:
        raise ValueError("give the sample shape (N, ...) or an initial x_T")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (N, ...) with N >= 1 and positive sizes, got {shape}")
    if not (isinstance(t_min, (int, float)) and 0.0 < t_min < sde.T):
        raise ValueError(f"t_min must satisfy 0 < t_min < T = {sde.T}, got {t_min!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return shape


def _check_steps(n_steps: int) -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")


def _batches(n: int, batch_size: int | None) -> list[tuple[int, int]]:
    b = n if batch_size is None else batch_size
    return [(i, min(i + b, n)) for i in range(0, n, b)]


def _initial(
    sde: SDE,
    shape: tuple[int, ...],
    x_T: Tensor | None,
    lo: int,
    hi: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Tensor:
    if x_T is not None:
        return x_T[lo:hi].to(dtype=dtype, device=device)
    return sde.prior_sample((hi - lo,) + shape[1:], generator=generator, dtype=dtype, device=device)


def _checked_score(score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    s = score_fn(x, t)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    return s


def _coef(fn: Callable[[Tensor], Tensor], t: float) -> float:
    """A per-time coefficient of the SDE at a scalar t, evaluated in float64."""
    return float(fn(torch.tensor([t], dtype=torch.float64))[0])


def _time_grid(T: float, t_min: float, n_steps: int) -> np.ndarray:
    """t_0 = T > t_1 > ... > t_n = t_min, uniform steps h = (T - t_min) / n."""
    return np.linspace(T, t_min, n_steps + 1)


# --------------------------------------------------------------------------------------------
# One step of each kind, from t to t - h (h > 0). Coefficients in float64, then cast.
# --------------------------------------------------------------------------------------------
def _em_step(
    score_fn: ScoreFn, sde: SDE, x: Tensor, t: float, h: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    tv = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    g = _coef(sde.diffusion, t)
    s = _checked_score(score_fn, x, tv)
    x_mean = x - h * (sde.drift(x, tv) - g * g * s)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x_mean + g * math.sqrt(h) * z, x_mean


def _reverse_diffusion_step(
    score_fn: ScoreFn, sde: SDE, x: Tensor, t: float, h: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    tv = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    alpha = _coef(sde.mean_coeff, t) / _coef(sde.mean_coeff, t - h)
    g2 = _coef(sde.marginal_var, t) - alpha**2 * _coef(sde.marginal_var, t - h)
    g2 = max(g2, 0.0)  # round-off only; the forward kernel variance is >= 0
    s = _checked_score(score_fn, x, tv)
    x_mean = (2.0 - alpha) * x + g2 * s
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x_mean + math.sqrt(g2) * z, x_mean


def _langevin_step(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    t: float,
    h: float,
    snr: float,
    generator: torch.Generator | None,
) -> Tensor:
    # Song et al.'s corrector: step = 2 alpha (snr |z| / |s|)^2 with the norms averaged over the
    # batch (per-sample norms make the step heavy-tailed in low dimension). alpha is the
    # one-step signal retention a(t)^2/a(t-h)^2 (1 - beta_i for VP, 1 for VE).
    tv = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    alpha = (_coef(sde.mean_coeff, t) / _coef(sde.mean_coeff, t - h)) ** 2
    s = _checked_score(score_fn, x, tv)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    b = x.shape[0]
    grad_norm = s.reshape(b, -1).norm(dim=-1).mean()
    noise_norm = z.reshape(b, -1).norm(dim=-1).mean()
    if not torch.isfinite(grad_norm) or float(grad_norm) == 0.0:
        # A zero or non-finite score leaves no step size to set: skip the corrector step.
        return x
    eps = 2.0 * alpha * (snr * noise_norm / grad_norm) ** 2
    return x + eps * s + torch.sqrt(2.0 * eps) * z


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------
def euler_maruyama(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...] | None = None,
    *,
    n_steps: int = 1000,
    t_min: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    x_T: Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> SampleResult:
    """Euler-Maruyama on the reverse SDE dx = [f(x,t) - g(t)^2 s(x,t)] dt + g(t) dw_bar.

    From x(T) ~ prior (or the given `x_T`), n_steps uniform steps of h = (T - t_min)/n_steps:
    x <- x - h [f(x,t) - g(t)^2 s(x,t)] + g(t) sqrt(h) z, z ~ N(0, I), with s evaluated at the
    start of each step. With `denoise` the last step adds no noise (it returns its mean, Song
    et al.'s `noise_removal`).

    Args:
        score_fn: s(x, t) with x (B, ...), t (B,) -> like x.
        sde: the forward SDE (scorefpe.sde).
        shape: (N, ...) of the samples; may be omitted when x_T is given.
        n_steps: number of steps (>= 1). Weak error O(h) in the law of the samples.
        t_min: end time, 0 < t_min < T.
        generator: source of every random draw (prior and noise).
        x_T: optional initial states (N, ...); then only the noise comes from `generator`.
        batch_size: split N into chunks of this size (None: one batch).
        progress: show a tqdm bar over steps.

    Returns:
        SampleResult(samples (N, ...) in `dtype` at t_min, nfe = n_steps per batch, summed).

    Cost: n_steps score evaluations per batch.

    Raises:
        ValueError: bad shape/t_min/n_steps/batch_size, or score_fn output not shaped like x.
    """
    shape = _check_common(sde, shape, x_T, t_min, batch_size)
    _check_steps(n_steps)
    return _run_sde_sampler(
        score_fn, sde, shape, x_T, n_steps, t_min, denoise, generator, dtype, device,
        batch_size, progress, predictor=Predictor.EULER_MARUYAMA, n_corrector=0, snr=0.0,
        desc="EM",
    )


def predictor_corrector(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...] | None = None,
    *,
    n_steps: int = 1000,
    snr: float = 0.16,
    n_corrector: int = 1,
    predictor: Predictor | str = Predictor.REVERSE_DIFFUSION,
    t_min: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    x_T: Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> SampleResult:
    """Predictor-corrector sampler (Song et al. 2021, Algorithms 2-3) with a Langevin corrector.

    At each grid time t_i (T = t_0 > ... > t_n = t_min, h = (T - t_min)/n_steps), first
    `n_corrector` Langevin steps at t_i,
        x <- x + eps s(x, t_i) + sqrt(2 eps) z,
        eps = 2 alpha_i (snr * mean_b |z_b| / mean_b |s_b|)^2,
    with alpha_i = (a(t_i)/a(t_i - h))^2 (1 - beta_i h for VP, 1 for VE) and the norms averaged
    over the batch as in Song et al.'s code (so the step, and the samples, depend on the
    batch-mates); then one predictor step t_i -> t_{i+1} (see `Predictor`). With `denoise` the
    last predictor step adds no noise.

    For a Gaussian target N(m, c I) and exact score the corrector alone would converge to
    N(m, c / (1 - eps/(2c)) I), a relative variance bias of about snr^2 alpha.

    Args:
        snr: target signal-to-noise ratio r > 0 (Song et al.: 0.16 for VE on CIFAR-10,
            0.01-0.17 elsewhere).
        n_corrector: Langevin steps per time (>= 0; 0 gives the predictor alone).
        predictor: Predictor or its value string.
        Other arguments as in `euler_maruyama`.

    Returns:
        SampleResult(samples, nfe = n_steps * (1 + n_corrector) per batch, summed).

    Raises:
        ValueError: bad snr/n_corrector/predictor and the errors of `euler_maruyama`.
    """
    shape = _check_common(sde, shape, x_T, t_min, batch_size)
    _check_steps(n_steps)
    pred = parse_choice(Predictor, predictor, "predictor")
    if not (isinstance(snr, (int, float)) and math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a finite number > 0, got {snr!r}")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be an integer >= 0, got {n_corrector!r}")
    return _run_sde_sampler(
        score_fn, sde, shape, x_T, n_steps, t_min, denoise, generator, dtype, device,
        batch_size, progress, predictor=pred, n_corrector=n_corrector, snr=float(snr), desc="PC",
    )


def _run_sde_sampler(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    x_T: Tensor | None,
    n_steps: int,
    t_min: float,
    denoise: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str,
    batch_size: int | None,
    progress: bool,
    *,
    predictor: Predictor,
    n_corrector: int,
    snr: float,
    desc: str,
) -> SampleResult:
    grid = _time_grid(sde.T, t_min, n_steps)
    step = _em_step if predictor is Predictor.EULER_MARUYAMA else _reverse_diffusion_step
    chunks = _batches(shape[0], batch_size)
    out = []
    nfe = 0
    with torch.no_grad(), tqdm(
        total=len(chunks) * n_steps, disable=not progress, desc=desc, unit="step"
    ) as bar:
        for lo, hi in chunks:
            x = _initial(sde, shape, x_T, lo, hi, generator, dtype, device)
            x_mean = x
            for i in range(n_steps):
                t, h = float(grid[i]), float(grid[i] - grid[i + 1])
                for _ in range(n_corrector):
                    x = _langevin_step(score_fn, sde, x, t, h, snr, generator)
                x, x_mean = step(score_fn, sde, x, t, h, generator)
                nfe += 1 + n_corrector
                bar.update(1)
            out.append(x_mean if denoise else x)
    return SampleResult(torch.cat(out, dim=0), nfe)


def probability_flow_ode(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...] | None = None,
    *,
    t_min: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    x_T: Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> SampleResult:
    """Solve the probability-flow ODE dx/dt = f(x,t) - 1/2 g(t)^2 s(x,t) from T down to t_min.

    Each batch is flattened to one float64 vector and handed to `scipy.integrate.solve_ivp`
    (adaptive explicit Runge-Kutta, error control per step: |local error| <= atol + rtol |x|
    componentwise in RMS). The score is evaluated in `dtype` on `device`. One step size is
    shared by the whole batch, so a sample depends slightly on its batch-mates at loose
    tolerances; record rtol, atol and nfe with any result.

    Args:
        rtol, atol: solver tolerances (> 0).
        method: one of ODE_METHODS ('RK45' Dormand-Prince 5(4), 'RK23', 'DOP853').
        generator: draws the prior samples (nothing else is random).
        Other arguments as in `euler_maruyama`.

    Returns:
        SampleResult(samples (N, ...) at t_min in `dtype`, nfe = solver function evaluations,
        summed over batches; RK45 uses about 6 per accepted step).

    Raises:
        ValueError: bad arguments or score_fn output not shaped like x.
        RuntimeError: the solver failed (its message is included).
    """
    shape = _check_common(sde, shape, x_T, t_min, batch_size)
    check_ode_options(rtol, atol, method)

    def checked(x: Tensor, t: Tensor) -> Tensor:
        return _checked_score(score_fn, x, t)

    chunks = _batches(shape[0], batch_size)
    out = []
    nfe = 0
    span = sde.T - t_min
    scale = 1000  # bar units per batch: the fraction of [t_min, T] covered
    with torch.no_grad(), tqdm(
        total=len(chunks) * scale, disable=not progress, desc="ODE", unit="‰"
    ) as bar:
        for k, (lo, hi) in enumerate(chunks):
            x0 = _initial(sde, shape, x_T, lo, hi, generator, dtype, device)
            bshape = x0.shape

            def fun(t: float, y: np.ndarray, _bshape=bshape, _k=k) -> np.ndarray:
                x = torch.from_numpy(y).reshape(_bshape).to(dtype=dtype, device=device)
                tv = torch.full((_bshape[0],), float(t), dtype=dtype, device=device)
                d = probability_flow_drift(checked, sde, x, tv)
                done = int(scale * (sde.T - t) / span)
                bar.update(max(0, _k * scale + done - bar.n))
                return d.detach().to(device="cpu", dtype=torch.float64).numpy().ravel()

            y0 = x0.detach().to(device="cpu", dtype=torch.float64).numpy().ravel()
            sol = solve_ivp(fun, (sde.T, t_min), y0, method=method, rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
            nfe += int(sol.nfev)
            y = torch.from_numpy(sol.y[:, -1].copy()).reshape(bshape)
            out.append(y.to(dtype=dtype, device=device))
            bar.update((k + 1) * scale - bar.n)
    return SampleResult(torch.cat(out, dim=0), nfe)


def reverse_diffusion(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...] | None = None,
                      **kw: Any) -> SampleResult:
    """`predictor_corrector` with the reverse-diffusion predictor and no corrector: one score
    evaluation per step (NFE = n_steps, half of PC's). Keyword arguments as there (snr and
    n_corrector excepted); measured on MNIST in docs/results/mnist_cpu_tradeoff.md."""
    for k in ("n_corrector", "snr"):
        if k in kw:
            raise ValueError(f"reverse_diffusion has no corrector: drop {k}")
    return predictor_corrector(score_fn, sde, shape, n_corrector=0,
                               predictor=Predictor.REVERSE_DIFFUSION, **kw)


SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "em": euler_maruyama,
    "pc": predictor_corrector,
    "rd": reverse_diffusion,
    "ode": probability_flow_ode,
}


def get_sampler(name: str) -> Callable[..., SampleResult]:
    """The sampler registered under `name` ('em', 'pc', 'rd', 'ode').

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
