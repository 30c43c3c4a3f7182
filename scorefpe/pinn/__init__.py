"""PINN solver of the score-FPE Cauchy problem (FP-Diffusion Sec. 6.1, eqs. 20-21).

Learn s~(x, t) on [t_min, T] from the vector score FPE d_t s = grad_x L[s] and the initial
condition s~(., t_min) = s(., t_min) alone (no denoising score matching), and measure it against
closed-form scores. One experiment end to end (the `scorefpe cauchy` command) is
`scorefpe.experiments.cauchy.run_cauchy`.
See `docs/results/cauchy.md`.
"""

from scorefpe.pinn.model import PreconditionedScore, data_scale, local_scale
from scorefpe.pinn.solver import (
    CauchyConfig,
    Collocation,
    Curriculum,
    ICBalancer,
    LRSchedule,
    InitCondition,
    Objective,
    Preconditioning,
    ResidualPool,
    TimeSampling,
    TrainState,
    Weighting,
    cauchy_loss,
    dsm_baseline_loss,
    evals_per_step,
    make_loss,
    rad_probabilities,
    train,
)
from scorefpe.pinn.evaluate import (
    EvalResult,
    density_grid,
    evaluate_model,
    log_ratio_error,
    mode_weights,
    score_error_curve,
    sliced_wasserstein,
)

__all__ = [
    "CauchyConfig",
    "Collocation",
    "Curriculum",
    "EvalResult",
    "ICBalancer",
    "InitCondition",
    "LRSchedule",
    "Objective",
    "PreconditionedScore",
    "Preconditioning",
    "ResidualPool",
    "TrainState",
    "TimeSampling",
    "Weighting",
    "cauchy_loss",
    "data_scale",
    "density_grid",
    "dsm_baseline_loss",
    "evals_per_step",
    "evaluate_model",
    "local_scale",
    "log_ratio_error",
    "make_loss",
    "mode_weights",
    "rad_probabilities",
    "score_error_curve",
    "sliced_wasserstein",
    "train",
]
