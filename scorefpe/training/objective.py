"""The DSM(+penalty) objective as a training-loop loss function (draws t, z, probes per step)."""

from __future__ import annotations

from enum import Enum
from typing import Callable

import torch
from torch import nn

from scorefpe._util import parse_choice
from scorefpe.penalties import LossTerms, PenaltyConfig, TimeProposal, draw_times, penalized_dsm
from scorefpe.sde import SDE
from scorefpe.training.randomness import StepContext


class DSMWeighting(str, Enum):
    """Time weighting lambda(t) of the DSM term, 1/2 lambda(t) ||s - grad log q_0t||^2 per sample.

    SIGMA2: lambda(t) = 2 v(t), i.e. the term ||std(t) s + z||^2 (2026 paper eq. 7; the default).
    G2_HALF: lambda(t) = g(t)^2 with FP-Diffusion's factor 1/2 (their eq. 3 and Sec. 5), i.e.
        g(t)^2 / (2 v(t)) ||std(t) s + z||^2. For VE, g^2 / (2 v) = log(sigma_max / sigma_min)
        (= 8.5) times v / (v + sigma_min^2 or 0): the DSM term is ~8.5x larger, so the same
        alpha weighs the regulariser ~8.5x less than under SIGMA2.
    """

    SIGMA2 = "sigma2"
    G2_HALF = "g2half"


def dsm_time_weight(sde: SDE, t: torch.Tensor, weighting: DSMWeighting | str) -> torch.Tensor:
    """Factor w(t) that turns ||std(t) s + z||^2 into the chosen weighting's term, shape (B,):
    1 for SIGMA2, g(t)^2 / (2 v(t)) for G2_HALF."""
    w = parse_choice(DSMWeighting, weighting, "DSM weighting")
    if w is DSMWeighting.SIGMA2:
        return torch.ones_like(t)
    return sde.diffusion(t) ** 2 / (2 * sde.marginal_var(t))


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel's forward cannot run under torch.func transforms; the operators get
    # the wrapped module (same parameters: their gradients still reach DDP's reducer hooks).
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def dsm_objective(
    sde: SDE, cfg: PenaltyConfig, weighting: DSMWeighting | str = DSMWeighting.SIGMA2,
) -> Callable[[nn.Module, torch.Tensor, StepContext], LossTerms]:
    """Loss function ``(model, x0, ctx) -> LossTerms`` for L = L_DSM + lambda P (2026 paper eq. 20).

    weighting: lambda(t) of the DSM term (`DSMWeighting`); the penalty term is not reweighted.

    Per step: t = t_min + (T - t_min) u with u ~ U[0, 1), z ~ N(0, I), both drawn for the global
    batch from the step's shared "noise" stream (with ``cfg.t_proposal`` other than uniform, t
    from that proposal with importance weights on every term, `penalties.draw_times`)
    (so data-parallel runs draw what one process draws); Hutchinson probes from the per-rank "probe" stream. See ``penalized_dsm`` for terms
    and costs. x0: (B, ...) data batch; the returned LossTerms hold per-sample terms (B,).
    """

    wt = parse_choice(DSMWeighting, weighting, "DSM weighting")

    def loss_fn(model: nn.Module, x0: torch.Tensor, ctx: StepContext) -> LossTerms:
        gen = ctx.generator("noise", per_rank=False)
        u = ctx.rand_rows(x0.shape[0], gen, x0.dtype)
        weights = None
        if cfg.t_proposal is TimeProposal.UNIFORM:
            t = cfg.t_min + (sde.T - cfg.t_min) * u  # unchanged draws: bit-identical runs
        else:
            # The component choice comes after z, so z is the uniform run's z for the same seed.
            t = None
        z = ctx.randn_rows(tuple(x0.shape), gen, x0.dtype)
        if t is None:
            c = ctx.rand_rows(x0.shape[0], gen, x0.dtype)
            t, weights = draw_times(u, c, cfg.t_min, sde.T, cfg.t_proposal)
        probe_gen = ctx.generator("probe", per_rank=True)
        out = penalized_dsm(
            model, sde, x0, t, z, cfg, generator=probe_gen, penalty_model=_unwrap(model),
            weights=weights,
        )
        if wt is DSMWeighting.SIGMA2:
            return out
        terms = dict(out.terms)
        terms["dsm"] = dsm_time_weight(sde, t, wt).to(terms["dsm"].dtype) * terms["dsm"]
        return LossTerms(terms, dict(out.weights))

    return loss_fn
