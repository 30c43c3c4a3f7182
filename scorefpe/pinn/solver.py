"""The Cauchy-problem loss of FP-Diffusion Sec. 6.1 (eqs. 20-21) and a small training loop.

    loss = E_{t, x ~ q_t} w(t)^2 ||eps[s~](x, t)||^2 / D  +  lambda_0 E_{x ~ q_{t_min}} b(t_min)^2 ||s~(x, t_min) - s(x, t_min)||^2 / D

eps[s] = d_t s - grad_x L[s] is `scorefpe.operators.fp_residual` (exact: forward-mode d_t s,
exact divergence; estimated: FP-Diffusion's finite-difference stencil and Hutchinson). Collocation
points are the perturbed data x(t) = a(t) x0 + sqrt(v(t)) z, t ~ U[t_min, T] (as the paper), or
with ``collocation=mixed`` half of them uniform on the widened data box: on the data's own points
the initial score of well-separated modes does not depend on the mode weights (to ~1e-17), so
the paper's scheme cannot recover them (docs/results/cauchy.md).
No denoising score matching enters the loss, except in the ``init=dsm`` variant, where the exact
initial score is replaced by the DSM target -z / std(t_min) at t_min (the paper's suggestion
for data without a known score).

Weighting w(t) (``Weighting.NATURAL``, the default): w = b(t)^3 / g(t)^2, b the model's output
scale (`PreconditionedScore.out_scale`: 1 / b is the RMS score size). Why: the score has size
~ 1/b and changes on the time scale d tau = g^2 / b^2 dt, so d_t s ~ g^2 / b^3; w(t) eps is the
residual of the dimensionless score b s in that natural time, O(1) at every noise level.
Unweighted (``Weighting.NONE``, the paper's), the residual is dominated by the t where g^2 / b^3
peaks: on gmm8 and gmm1d the solver then settles on a smooth exact solution that ignores the
initial condition. With the first preconditioning (``Preconditioning.GLOBAL``: c in place of b,
raw time; kept to reproduce the first runs) the natural weight was ~4e4 at t_min on gmm2d and
trapped the solver instead; there the unweighted residual was the working choice
(docs/results/cauchy.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Callable

import torch
from torch import nn

from scorefpe._util import parse_choice
from scorefpe.operators import ResidualMethod, TimeMethod, fp_residual
from scorefpe.penalties import dsm_loss
from scorefpe.sde import SDE
from scorefpe.training.ema import EMA

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]
X0Sampler = Callable[[int, torch.Generator], Tensor]


class InitCondition(str, Enum):
    """Initial-condition term: the exact score at t_min, or DSM at t_min (noisy-data variant)."""

    EXACT = "exact"
    DSM = "dsm"


class Weighting(str, Enum):
    """Per-time weight w(t) of the residual: b^3 / g^2 (natural time, dimensionless) or 1."""

    NATURAL = "natural"
    NONE = "none"


class Preconditioning(str, Enum):
    """The model's wrapper (`scorefpe.pinn.model`): ``local`` scales by b(t), the RMS size of
    the initial score carried forward (needs the exact initial score), with the network's time
    tau(t); ``global`` is the first version (scale c(t) from the data's spread, raw time)."""

    LOCAL = "local"
    GLOBAL = "global"


class Collocation(str, Enum):
    """Where the points x are drawn: the perturbed data (the paper), or a share of them
    (`CauchyConfig.uniform_fraction`, default half) uniform on
    the box a(t) [data min, data max] +- 3 std(t) (covers the low-density valleys between modes,
    where alone the initial score carries the mode weights)."""

    DATA = "data"
    MIXED = "mixed"


class TimeSampling(str, Enum):
    """How the collocation times are drawn: t ~ U[t_min, T] (the paper), uniform in
    tau = log(rho(t) / rho(t_min)) / log(rho(T) / rho(t_min)), rho = b / a, the log of the
    score's length scale (the network's time with the local wrapper: the points go where the
    score changes, for gmm2d VE ~95 % of them at t > 0.5, where the modes merge), or half of each."""

    UNIFORM = "uniform"
    TAU = "tau"
    MIXED = "mixed"


class LRSchedule(str, Enum):
    """The step size from lr (step 0) to lr_final (the last step): cosine (the default),
    exponential (geometric: below lr_final^(1/2) lr^(1/2) from half-way, where cosine stays near
    lr / 2), or constant at lr."""

    COSINE = "cosine"
    EXPONENTIAL = "exponential"
    CONSTANT = "constant"


class Objective(str, Enum):
    """What is trained: the score-FPE Cauchy problem (PINN) or plain DSM (the baseline)."""

    PINN = "pinn"
    DSM = "dsm"


@dataclass(frozen=True)
class CauchyConfig:
    """Resolved options of one run (saved as config.json beside the checkpoints).

    The field defaults are the paper's setting (data collocation, no adaptive collocation);
    `scorefpe cauchy`'s own defaults are the setting measured best in docs/results/cauchy.md
    (sde ve, collocation mixed, uniform_fraction 0.25).

    steps: optimiser steps; batch: collocation points per step; batch_ic: initial-condition
    points per step; lr: peak Adam step size (cosine decay to lr_final); ic_weight: lambda_0;
    residual: exact or estimated residual; n_probes: Hutchinson probes (estimated only);
    weighting: w(t); precond: the model's wrapper (`Preconditioning`); init: exact or dsm
    initial condition; uniform_fraction: share of the collocation (and exact initial-condition)
    points drawn uniform on the widened data box when collocation=mixed, in (0, 1]; t_sampling:
    the collocation times' law (`TimeSampling`); t_min: start time; seed: all
    randomness (model init and the data/time/noise stream); objective: pinn or dsm;
    dsm_batch: batch of the DSM baseline (None: `evals_per_step` of the PINN config, so both
    spend the same number of model evaluations per step); ema: decay of an exponential moving
    average of the weights that the evaluation uses (0: off, the raw weights; training itself
    is unchanged); causal_eps, causal_bins: causal weighting in t (`causal_weights`; 0: off);
    rad_every, rad_pool, rad_k, rad_c: residual-based adaptive collocation (`ResidualPool`;
    rad_every 0: off): every rad_every steps a pool of rad_pool candidates is drawn from the
    collocation law and the batch is drawn from it with probability prop. to
    r^k / mean(r^k) + c (`rad_probabilities`); rad_ic: the initial-condition points too, from a
    second pool of the initial-condition law ranked by their squared IC error (needs rad_every > 0
    and init exact); balance_every, balance_decay: gradient-norm
    balancing of the initial-condition weight (`ICBalancer`; balance_every 0: off);
    curriculum: share of the steps over which the collocation times' horizon grows linearly
    from t_min to T (`Curriculum`; 0: off); lr_schedule: `LRSchedule` from lr to lr_final;
    time_method: how the residual takes d_t s (`scorefpe.operators.TimeMethod`; None: the
    residual method's own, forward-mode for exact and FP-Diffusion's stencil for estimated).
    """

    dataset: str = "gmm2d"
    sde: str = "ve"
    steps: int = 3000
    batch: int = 256
    batch_ic: int = 256
    lr: float = 1e-2
    lr_final: float = 1e-4
    ic_weight: float = 1.0
    residual: str = "exact"
    n_probes: int = 1
    weighting: str = "natural"
    precond: str = "local"
    init: str = "exact"
    t_min: float = 1e-3
    hidden: int = 128
    depth: int = 3
    seed: int = 0
    objective: str = "pinn"
    collocation: str = "data"
    uniform_fraction: float = 0.5
    t_sampling: str = "uniform"
    dsm_batch: int | None = None
    grad_clip: float = 10.0
    ema: float = 0.0
    causal_eps: float = 0.0
    causal_bins: int = 8
    rad_every: int = 0
    rad_pool: int = 4096
    rad_k: float = 1.0
    rad_c: float = 1.0
    balance_every: int = 0
    balance_decay: float = 0.9
    rad_ic: bool = False
    curriculum: float = 0.0
    lr_schedule: str = "cosine"
    time_method: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "batch_ic", "n_probes", "hidden", "depth", "causal_bins", "rad_pool"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.dsm_batch is not None and (not isinstance(self.dsm_batch, int) or self.dsm_batch < 1):
            raise ValueError(f"dsm_batch must be a positive integer or None, got {self.dsm_batch!r}")
        for name in ("lr", "lr_final", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if not (isinstance(self.ic_weight, (int, float)) and self.ic_weight >= 0):
            raise ValueError(f"ic_weight must be >= 0, got {self.ic_weight!r}")
        if isinstance(self.ema, bool) or not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise ValueError(f"ema must lie in [0, 1), got {self.ema!r}")
        e = self.causal_eps
        if isinstance(e, bool) or not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0):
            raise ValueError(f"causal_eps must be a finite number >= 0, got {e!r}")
        for name in ("rad_every", "balance_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: off), got {v!r}")
        for name in ("rad_k", "rad_c"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.rad_ic, bool):
            raise ValueError(f"rad_ic must be True or False, got {self.rad_ic!r}")
        if self.rad_ic and self.rad_every == 0:
            raise ValueError("rad_ic draws the initial-condition points from an adaptive pool: it needs rad_every > 0")
        if self.rad_ic and self.init != InitCondition.EXACT:
            raise ValueError("rad_ic ranks points by their initial-condition error: it needs init='exact'")
        cu = self.curriculum
        if isinstance(cu, bool) or not (isinstance(cu, (int, float)) and 0 <= cu <= 1):
            raise ValueError(f"curriculum must lie in [0, 1], got {cu!r}")
        parse_choice(LRSchedule, self.lr_schedule, "lr schedule")
        if self.time_method is not None:
            parse_choice(TimeMethod, self.time_method, "time method")
        b = self.balance_decay
        if isinstance(b, bool) or not (isinstance(b, (int, float)) and 0 <= b < 1):
            raise ValueError(f"balance_decay must lie in [0, 1), got {b!r}")
        f = self.uniform_fraction
        if isinstance(f, bool) or not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise ValueError(f"uniform_fraction must lie in (0, 1], got {self.uniform_fraction!r}")
        if not (0 < self.t_min < 1):
            raise ValueError(f"t_min must lie in (0, 1), got {self.t_min!r}")
        parse_choice(ResidualMethod, self.residual, "residual method")
        parse_choice(Weighting, self.weighting, "weighting")
        parse_choice(InitCondition, self.init, "initial condition")
        parse_choice(Objective, self.objective, "objective")
        parse_choice(Collocation, self.collocation, "collocation")
        parse_choice(TimeSampling, self.t_sampling, "time sampling")
        parse_choice(Preconditioning, self.precond, "preconditioning")
        if self.precond == Preconditioning.LOCAL and self.init == InitCondition.DSM:
            raise ValueError("precond='local' needs the exact initial score (its RMS sets the scale); "
                             "with init='dsm' use precond='global'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evals_per_step(cfg: CauchyConfig, dim: int) -> int:
    """Model evaluations (sample x network pass; a JVP counts as one) per PINN step.

    exact residual: D JVPs for div_x s (their primal is s) + 1 JVP in t, on the batch, plus the
    IC batch: (D + 1) B + B_ic. estimated: K probe JVPs + 3 stencil evaluations (nonuniform
    stencil): (K + 3) B + B_ic. Backward passes are not counted (the PINN's are costlier: it
    differentiates through second derivatives); wall time is reported beside this.
    """
    if ResidualMethod(cfg.residual) is ResidualMethod.EXACT:
        per = dim + 1
    else:
        per = cfg.n_probes + 3
    return per * cfg.batch + cfg.batch_ic


def residual_weight(model_scale: Callable[[Tensor], Tensor], sde: SDE, t: Tensor, weighting: Weighting) -> Tensor:
    """w(t), shape (B,): b(t)^3 / g(t)^2 (natural; b = ``model_scale``) or ones."""
    if weighting is Weighting.NONE:
        return torch.ones_like(t)
    return model_scale(t) ** 3 / sde.diffusion(t) ** 2


def _uniform_t(n: int, t_min: float, T: float, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    return t_min + (T - t_min) * torch.rand(n, generator=gen, dtype=dtype)


def _sample_t(n: int, cfg: CauchyConfig, sde: SDE, scale_fn: Callable[[Tensor], Tensor], gen: torch.Generator,
              dtype: torch.dtype, n_grid: int = 2049) -> Tensor:
    """n collocation times, shape (n,), by ``cfg.t_sampling`` (`TimeSampling`): tau-uniform ones by
    inverting tau(t) = log(scale_fn(t) / a(t)), normalised, linearly on ``n_grid`` t-points
    (tau is increasing: b / a grows with the noise). uniform draws exactly as before the option."""
    how = TimeSampling(cfg.t_sampling)
    if how is TimeSampling.UNIFORM:
        return _uniform_t(n, cfg.t_min, sde.T, gen, dtype)
    n_uni = n // 2 if how is TimeSampling.MIXED else 0
    with torch.no_grad():
        grid = torch.linspace(cfg.t_min, sde.T, n_grid, dtype=torch.float64)
        log_rho = (scale_fn(grid).to(torch.float64) / sde.mean_coeff(grid)).log()
        tau = (log_rho - log_rho[0]) / (log_rho[-1] - log_rho[0])
        u = torch.rand(n - n_uni, generator=gen, dtype=torch.float64)
        j = torch.searchsorted(tau, u).clamp(1, n_grid - 1)
        frac = (u - tau[j - 1]) / (tau[j] - tau[j - 1]).clamp_min(1e-300)
        t_tau = grid[j - 1] + frac.clamp(0, 1) * (grid[j] - grid[j - 1])
    return torch.cat([_uniform_t(n_uni, cfg.t_min, sde.T, gen, dtype), t_tau.to(dtype)])


def _mix_uniform(x: Tensor, x0: Tensor, t: Tensor, sde: SDE, gen: torch.Generator, fraction: float = 0.5) -> Tensor:
    """Replace the last ceil(fraction B) rows of x by points uniform on a(t) [min x0, max x0] +- 3 std(t)."""
    n = math.floor(x.shape[0] * (1 - fraction))
    if n == x.shape[0]:
        return x
    a = sde.mean_coeff(t[n:])[:, None]
    sd = sde.marginal_std(t[n:])[:, None]
    lo = a * x0.min(0).values - 3 * sd
    hi = a * x0.max(0).values + 3 * sd
    u = torch.rand(x.shape[0] - n, x.shape[1], generator=gen, dtype=x.dtype)
    return torch.cat([x[:n], lo + u * (hi - lo)])


def causal_weights(t: Tensor, per_point: Tensor, t_min: float, T: float, n_bins: int, eps: float,
                   start: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Causal weighting in t (Wang, Sankaran & Perdikaris 2022, "Respecting causality"), on
    one batch binned in t.

    The batch's times t (B,) are put in ``n_bins`` equal bins of [t_min, T]; L_i is the mean of
    ``per_point`` (B,) over bin i (0 for an empty bin), and bin i gets the weight
        W_i = exp(-eps (start + sum_{k < i} L_k)),
    detached from the graph: a later time is trained only once the earlier times (and ``start``,
    here the initial-condition term) are fitted; W_i = 1 where they vanish. Returns
    (W (n_bins,), the weighted loss sum_i W_i L_i / #non-empty bins (a scalar in the graph of
    ``per_point``)). With all W_i = 1 that is the mean of the bin means, not of the points.
    Cost: O(B).
    """
    edges = torch.linspace(t_min, T, n_bins + 1, dtype=t.dtype)[1:-1]
    idx = torch.bucketize(t.detach(), edges)
    count = torch.bincount(idx, minlength=n_bins).to(per_point.dtype)
    sums = torch.zeros(n_bins, dtype=per_point.dtype).index_add(0, idx, per_point)
    means = sums / count.clamp_min(1)
    before = torch.cumsum(means.detach(), 0) - means.detach()
    start = torch.as_tensor(start, dtype=per_point.dtype).detach()
    w = torch.exp(-eps * (start + before))
    return w, (w * means).sum() / (count > 0).sum()


def _collocation_points(n: int, cfg: CauchyConfig, sde: SDE, scale_fn: Callable[[Tensor], Tensor],
                        sample_x0: X0Sampler, gen: torch.Generator, dtype: torch.dtype,
                        horizon: float = 1.0) -> tuple[Tensor, Tensor]:
    """n collocation points of the law of ``cfg`` (x (n, D), t (n,)): x0 from the data, t by
    cfg.t_sampling (mapped to t_min + horizon (t - t_min) when horizon < 1), x = a(t) x0 +
    sqrt(v(t)) z, and with collocation=mixed the share cfg.uniform_fraction of them uniform on
    the widened box (`_mix_uniform`)."""
    x0 = sample_x0(n, gen).to(dtype)
    t = _sample_t(n, cfg, sde, scale_fn, gen, dtype)
    if horizon < 1.0:
        t = cfg.t_min + horizon * (t - cfg.t_min)
    x, _ = sde.perturb(x0, t, gen)
    if Collocation(cfg.collocation) is Collocation.MIXED:
        x = _mix_uniform(x, x0, t, sde, gen, cfg.uniform_fraction)
    return x, t


def rad_probabilities(r: Tensor, k: float, c: float) -> Tensor:
    """Sampling probabilities of residual-based adaptive distribution (RAD; Wu, Zhu, Tan, Kartha
    & Lu 2023, eq. 2): p_j prop. to r_j^k / mean_j(r_j^k) + c, normalised to sum 1.

    r (N,) >= 0 are the candidates' residuals (here w(t)^2 ||eps||^2 / D). k = 0 or c -> inf
    give the uniform choice among the candidates (the collocation law itself); c = 0 samples
    prop. to r^k alone, which the RAD paper found too greedy. All r zero: uniform. Cost O(N).
    """
    rk = r.detach().to(torch.float64).clamp_min(0) ** k
    m = rk.mean()
    p = (rk / m if m > 0 else torch.zeros_like(rk)) + c
    if not bool(p.sum() > 0):  # c = 0 and every r zero
        p = torch.ones_like(p)
    return p / p.sum()


class ResidualPool:
    """State of residual-based adaptive collocation (`rad_probabilities`): a pool of candidate
    collocation points (x (N, D), t (N,)) from the collocation law, their probabilities, and the
    number of batches drawn (for the initial-condition pool of cfg.rad_ic, ``t`` holds each
    candidate's target score (N, D) instead: whatever must be drawn with the point). Every ``every``-th draw (the first included) the pool is redrawn and
    its residuals evaluated with the current model; the batch is drawn from the pool with
    replacement. Saved in the checkpoint (`state_dict`), so a resumed run draws the same points."""

    def __init__(self, every: int, size: int, k: float, c: float) -> None:
        if every < 1 or size < 1:
            raise ValueError(f"ResidualPool needs every >= 1 and size >= 1, got {every!r}, {size!r}")
        self.every, self.size, self.k, self.c = every, size, k, c
        self.x: Tensor | None = None
        self.t: Tensor | None = None
        self.prob: Tensor | None = None
        self.draws = 0

    @classmethod
    def from_config(cls, cfg: CauchyConfig) -> "ResidualPool | None":
        """The pool of ``cfg`` (None when cfg.rad_every == 0)."""
        return cls(cfg.rad_every, cfg.rad_pool, cfg.rad_k, cfg.rad_c) if cfg.rad_every > 0 else None

    def draw(self, n: int, refresh: Callable[[], tuple[Tensor, Tensor, Tensor]],
             gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """n points (x, t) drawn from the pool by its probabilities; first, on every ``every``-th
        call, ``refresh()`` -> (x, t, r) replaces the pool and its probabilities."""
        if self.draws % self.every == 0 or self.x is None:
            self.x, self.t, r = refresh()
            self.prob = rad_probabilities(r, self.k, self.c)
        self.draws += 1
        idx = torch.multinomial(self.prob, n, replacement=True, generator=gen)
        return self.x[idx], self.t[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "t": self.t, "prob": self.prob, "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x, self.t, self.prob, self.draws = state["x"], state["t"], state["prob"], int(state["draws"])


class Curriculum:
    """A curriculum in t from t_min outward: at loss draw k (0-based) the collocation times are
    mapped t -> t_min + h_k (t - t_min), h_k = min(1, (k + 1) / (fraction * steps)), so the
    horizon grows linearly from t_min to T over the first ``fraction`` of the steps and the
    law of cfg.t_sampling is kept inside it. ``draws`` is the step reached (set it on resume)."""

    def __init__(self, fraction: float, steps: int) -> None:
        if not (0 < fraction <= 1) or steps < 1:
            raise ValueError(f"Curriculum needs 0 < fraction <= 1 and steps >= 1, got {fraction!r}, {steps!r}")
        self.fraction, self.steps, self.draws = fraction, steps, 0

    @classmethod
    def from_config(cls, cfg: CauchyConfig) -> "Curriculum | None":
        """The curriculum of ``cfg`` (None when cfg.curriculum == 0)."""
        return cls(cfg.curriculum, cfg.steps) if cfg.curriculum > 0 else None

    def next(self) -> float:
        """h_k of this draw; advances k."""
        h = min(1.0, (self.draws + 1) / (self.fraction * self.steps))
        self.draws += 1
        return h


def cauchy_loss(
    score_fn: ScoreFn,
    scale_fn: Callable[[Tensor], Tensor],
    sde: SDE,
    sample_x0: X0Sampler,
    true_score: ScoreFn | None,
    cfg: CauchyConfig,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    pool: ResidualPool | None = None,
    ic_pool: ResidualPool | None = None,
    horizon: float = 1.0,
) -> dict[str, Tensor]:
    """One draw of the Cauchy-problem loss; returns {"residual", "initial", "total"} (scalars,
    in the autograd graph of score_fn's parameters).

    residual = mean_b w(t_b)^2 ||eps[s~](x_b, t_b)||^2 / D at collocation points x_b ~ q_{t_b},
               t_b by cfg.t_sampling (default U[t_min, T])
               (collocation=mixed: a share cfg.uniform_fraction of them, default half, and of the
               initial-condition points when init=exact, uniform on the data's box widened by 3 std(t));
    initial  = mean b(t_min)^2 ||s~(x, t_min) - target||^2 / D with target = s(x, t_min) (exact)
               or -z / std(t_min) (dsm; minimiser the same, variance ~ b^2 / std^2 per sample);
    total    = residual + ic_weight * initial.
    With cfg.causal_eps > 0 the residual term of ``total`` is causally weighted in t
    (`causal_weights`, cfg.causal_bins bins, the initial-condition term ic_weight * initial as
    the start of the cumulative sum): total = residual_causal + ic_weight * initial, and the
    dict also holds "residual_causal" and "causal_w_last" (the last bin's weight, a diagnostic).
    With a ``pool`` (residual-based adaptive collocation, `ResidualPool`) the collocation
    points are drawn from it: on a refresh, cfg.rad_pool candidates of the law above, ranked by
    w(t)^2 ||eps||^2 / D of the current model (cfg.residual, no graph: about (D + 1) rad_pool
    model evaluations); the residual term is their plain mean (RAD does not reweight: the loss's
    measure moves to where the residual is large).
    ``horizon`` h < 1 (`Curriculum`) maps the collocation times t -> t_min + h (t - t_min).
    With an ``ic_pool`` (cfg.rad_ic) the initial-condition points are drawn the same way from
    cfg.rad_pool candidates of their own law, ranked by b(t_min)^2 ||s~ - s||^2 / D (one model
    evaluation per candidate, no graph). Why: on gmm2d the mode weights sit in where the initial
    score jumps between the modes, a band of width s^2 / |mu_j - mu_k| (0.07) that ~0.5 % of
    the uniform points hit; an IC error there is carried unchanged to t ~ 0.4 (docs/results/cauchy.md).

    ``scale_fn`` is b(t) (the model's `out_scale`: with the local preconditioning b(t_min)^2 =
    1 / J_0, so ``initial`` is the squared error relative to the initial score's mean square). ``true_score`` is needed for init=exact.
    Cost (exact residual): see `evals_per_step`, plus one backward through second derivatives.

    Raises:
        ValueError: init=exact without a true score.
    """
    init = InitCondition(cfg.init)
    weighting = Weighting(cfg.weighting)
    mixed = Collocation(cfg.collocation) is Collocation.MIXED

    def weighted_residual(x: Tensor, t: Tensor, create_graph: bool) -> Tensor:
        eps = fp_residual(
            score_fn, sde, x, t, method=cfg.residual, n_probes=cfg.n_probes, generator=generator,
            t_min=cfg.t_min, create_graph=create_graph, time_method=cfg.time_method,
        )
        w = residual_weight(scale_fn, sde, t, weighting)
        return (w[:, None] ** 2 * eps.pow(2)).sum(-1)

    def refresh() -> tuple[Tensor, Tensor, Tensor]:
        xc, tc = _collocation_points(cfg.rad_pool, cfg, sde, scale_fn, sample_x0, generator, dtype, horizon)
        return xc, tc, weighted_residual(xc, tc, False).detach() / xc.shape[1]

    if pool is None:
        x, t = _collocation_points(cfg.batch, cfg, sde, scale_fn, sample_x0, generator, dtype, horizon)
    else:
        x, t = pool.draw(cfg.batch, refresh, generator)
    d = x.shape[1]
    per_point = weighted_residual(x, t, True)
    residual = per_point.mean() / d  # mean, then / d: the loss of runs made before causal weighting

    if init is InitCondition.EXACT and true_score is None:
        raise ValueError("init='exact' needs the closed-form score at t_min (true_score)")

    def ic_points(n: int) -> tuple[Tensor, Tensor, Tensor]:
        x0i = sample_x0(n, generator).to(dtype)
        ti = torch.full((n,), cfg.t_min, dtype=dtype)
        xi, z = sde.perturb(x0i, ti, generator)
        if mixed and init is InitCondition.EXACT:
            xi = _mix_uniform(xi, x0i, ti, sde, generator, cfg.uniform_fraction)
        if init is InitCondition.EXACT:
            return xi, ti, true_score(xi, ti).to(dtype).detach()
        return xi, ti, -z / sde.marginal_std(ti)[:, None]

    def ic_error(xi: Tensor, ti: Tensor, target: Tensor) -> Tensor:
        return (scale_fn(ti)[:, None] ** 2 * (score_fn(xi, ti) - target).pow(2)).sum(-1) / d

    if ic_pool is None:
        xi, ti, target = ic_points(cfg.batch_ic)
    else:
        def ic_refresh() -> tuple[Tensor, Tensor, Tensor]:
            xc, tc, yc = ic_points(cfg.rad_pool)
            with torch.no_grad():
                r = ic_error(xc, tc, yc)
            # the pool's "t" slot carries the targets: they are drawn with their points
            return xc, yc, r
        xi, target = ic_pool.draw(cfg.batch_ic, ic_refresh, generator)
        ti = torch.full((cfg.batch_ic,), cfg.t_min, dtype=dtype)
    initial = ic_error(xi, ti, target).mean()
    if cfg.causal_eps == 0:
        return {"residual": residual, "initial": initial, "total": residual + cfg.ic_weight * initial}
    ic = cfg.ic_weight * initial
    cw, causal = causal_weights(t, per_point / d, cfg.t_min, sde.T, cfg.causal_bins, cfg.causal_eps, start=ic)
    return {"residual": residual, "initial": initial, "residual_causal": causal,
            "causal_w_last": cw[-1], "total": causal + ic}


def dsm_baseline_loss(
    score_fn: ScoreFn,
    sde: SDE,
    sample_x0: X0Sampler,
    batch: int,
    t_min: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Plain DSM (2026 paper eq. 7): mean ||std(t) s~(x(t), t) + z||^2 / D, t ~ U[t_min, T].
    Returns {"dsm", "total"}. Cost: one forward and one backward on `batch` samples."""
    x0 = sample_x0(batch, generator).to(dtype)
    t = _uniform_t(batch, t_min, sde.T, generator, dtype)
    x, z = sde.perturb(x0, t, generator)
    loss = dsm_loss(score_fn(x, t), z, sde.marginal_std(t)).mean() / x0.shape[1]
    return {"dsm": loss, "total": loss}


def make_loss(
    model: nn.Module, sde: SDE, sample_x0: X0Sampler, true_score: ScoreFn | None, cfg: CauchyConfig,
    pool: ResidualPool | None = None, ic_pool: ResidualPool | None = None,
    curriculum: Curriculum | None = None,
) -> Callable[[torch.Generator], dict[str, Tensor]]:
    """The loss of ``cfg.objective`` as a function of the step's generator (PINN: drawing its
    collocation points from ``pool`` and its initial-condition points from ``ic_pool`` when
    given, `ResidualPool`, inside the horizon of ``curriculum``, one `Curriculum.next` per call)."""
    if Objective(cfg.objective) is Objective.PINN:
        return lambda gen: cauchy_loss(model, model.out_scale, sde, sample_x0, true_score, cfg, gen, pool=pool,
                                       ic_pool=ic_pool,
                                       horizon=curriculum.next() if curriculum is not None else 1.0)
    batch = cfg.dsm_batch if cfg.dsm_batch is not None else evals_per_step(cfg, model.net.config.dim)
    return lambda gen: dsm_baseline_loss(model, sde, sample_x0, batch, cfg.t_min, gen)


class ICBalancer:
    """Gradient-norm balancing of the initial-condition weight (Wang, Teng & Perdikaris 2021,
    "Understanding and mitigating gradient pathologies in PINNs", Algorithm 1, with the ratio of
    gradient L2 norms as in their later papers instead of max / mean of |grad|).

    Every ``every``-th step (the first included) lambda_hat = ||grad_theta R|| / ||grad_theta I||,
    R the residual term (the causal one when on; its weights' start term keeps cfg.ic_weight),
    I the initial-condition term, and lambda <- decay lambda + (1 - decay) lambda_hat;
    total = R + lambda I. lambda starts at cfg.ic_weight. Cost: on an update step one extra backward of R and one of I (R's, through
    second derivatives, dominates: ~1 / every more backward work). Saved in the checkpoint."""

    def __init__(self, weight: float, every: int, decay: float) -> None:
        if every < 1 or not (0 <= decay < 1):
            raise ValueError(f"ICBalancer needs every >= 1 and decay in [0, 1), got {every!r}, {decay!r}")
        self.weight, self.every, self.decay = float(weight), every, float(decay)

    @classmethod
    def from_config(cls, cfg: CauchyConfig) -> "ICBalancer | None":
        """The balancer of ``cfg`` (None when cfg.balance_every == 0)."""
        return cls(cfg.ic_weight, cfg.balance_every, cfg.balance_decay) if cfg.balance_every > 0 else None

    def weigh(self, terms: dict[str, Tensor], params: list[Tensor], step: int) -> dict[str, Tensor]:
        """``terms`` of `cauchy_loss` with "total" = R + lambda I and "ic_weight" = lambda, after
        updating lambda if ``step`` (0-based, the step about to be taken) is an update step."""
        res = terms.get("residual_causal", terms["residual"])
        if step % self.every == 0:
            g_r = torch.autograd.grad(res, params, retain_graph=True, allow_unused=True)
            g_i = torch.autograd.grad(terms["initial"], params, retain_graph=True, allow_unused=True)
            n_r = torch.sqrt(sum((g.pow(2).sum() for g in g_r if g is not None), torch.zeros(())))
            n_i = torch.sqrt(sum((g.pow(2).sum() for g in g_i if g is not None), torch.zeros(())))
            if bool(n_i > 0) and bool(torch.isfinite(n_r)) and bool(torch.isfinite(n_i)):
                self.weight = self.decay * self.weight + (1 - self.decay) * float(n_r / n_i)
        lam = torch.tensor(self.weight, dtype=res.dtype)
        return {**terms, "ic_weight": lam, "total": res + lam * terms["initial"]}

    def state_dict(self) -> dict[str, float]:
        return {"weight": self.weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.weight = float(state["weight"])


@dataclass
class TrainState:
    """What a resumed run needs: step reached, optimiser and generator state, loss history."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def lr_at(step: int, cfg: CauchyConfig) -> float:
    """The step size of ``step`` by cfg.lr_schedule (`LRSchedule`) from cfg.lr to cfg.lr_final
    over cfg.steps (a function of the step: resumable)."""
    frac = min(step / max(cfg.steps, 1), 1.0)
    how = LRSchedule(cfg.lr_schedule)
    if how is LRSchedule.CONSTANT:
        return cfg.lr
    if how is LRSchedule.EXPONENTIAL:
        return cfg.lr * (cfg.lr_final / cfg.lr) ** frac
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * frac))


def train(
    model: nn.Module,
    loss_fn: Callable[[torch.Generator], dict[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    cfg: CauchyConfig,
    state: TrainState,
    *,
    callback: Callable[[TrainState, dict[str, float]], None] | None = None,
    stop_at: int | None = None,
    ema: EMA | None = None,
    balancer: ICBalancer | None = None,
) -> TrainState:
    """Run optimiser steps state.step .. cfg.steps - 1 of ``loss_fn`` (Adam, cosine lr, gradient
    norm clipped at cfg.grad_clip). After each step, appends the loss terms to state.history and
    calls ``callback(state, terms)`` (progress, checkpoints). ``stop_at`` ends this call early at
    that step (the schedule still spans cfg.steps, so a resumed run continues it exactly).
    ``ema`` (a `scorefpe.training.ema.EMA` of ``model``) is updated after each optimiser step;
    it does not enter the loss, so the trajectory is the same with or without it. ``balancer``
    (`ICBalancer`) replaces the loss's "total" by R + lambda I with its own lambda.
    Returns the updated state.

    Raises:
        FloatingPointError: a non-finite loss (the step is not applied).
    """
    model.train()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    while state.step < end:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state.step, cfg)
        optimizer.zero_grad(set_to_none=True)
        terms = loss_fn(generator)
        if balancer is not None:
            terms = balancer.weigh(terms, [p for g in optimizer.param_groups for p in g["params"]], state.step)
        total = terms["total"]
        if not bool(torch.isfinite(total)):
            # Name the first non-finite term: it says which part of the loss blew up.
            bad = [k for k, v in terms.items() if k != "total" and not bool(torch.isfinite(v).all())]
            name = bad[0] if bad else "total"
            raise FloatingPointError(
                f"non-finite loss at step {state.step + 1}: term {name!r} = {float(terms[name].detach().sum())}")
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        state.step += 1
        row = {k: float(v.detach()) for k, v in terms.items()}
        row["grad_norm"] = float(gnorm)
        row["step"] = state.step
        state.history.append(row)
        if callback is not None:
            callback(state, row)
    return state
