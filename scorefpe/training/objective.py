"""The DSM(+penalty) objective as a training-loop loss function (draws t, z, probes per step)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from scorefpe.penalties import LossTerms, PenaltyConfig, TimeProposal, draw_times, penalized_dsm
from scorefpe.sde import SDE
from scorefpe.training.randomness import StepContext


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel's forward cannot run under torch.func transforms; the operators get
    # the wrapped module (same parameters: their gradients still reach DDP's reducer hooks).
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def dsm_objective(
    sde: SDE, cfg: PenaltyConfig
) -> Callable[[nn.Module, torch.Tensor, StepContext], LossTerms]:
    """Loss function ``(model, x0, ctx) -> LossTerms`` for L = L_DSM + lambda P (2026 paper eq. 20).

    Per step: t = t_min + (T - t_min) u with u ~ U[0, 1), z ~ N(0, I), both drawn for the global
    batch from the step's shared "noise" stream (with ``cfg.t_proposal`` other than uniform, t
    from that proposal with importance weights on every term, `penalties.draw_times`)
    (so data-parallel runs draw what one process draws); Hutchinson probes from the per-rank "probe" stream. See ``penalized_dsm`` for terms
    and costs. x0: (B, ...) data batch; the returned LossTerms hold per-sample terms (B,).
    """

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
        return penalized_dsm(
            model, sde, x0, t, z, cfg, generator=probe_gen, penalty_model=_unwrap(model),
            weights=weights,
        )

    return loss_fn
