"""Model parameterisations and their conversion to a score, written once.

A network may predict the score s, the noise eps, or the clean sample x0_hat. With the Gaussian
transition kernel x(t) = a(t) x0 + std(t) z of a linear SDE (v = std^2), Tweedie's formula
E[x0 | x(t)] = (x + v s) / a and E[z | x(t)] = -std s give (Song et al. 2021; Ho et al. 2020)

    score: s = model(x, t)
    eps:   s = -eps_hat / std(t)
    x0:    s = (a(t) x0_hat - x) / v(t)

and the inverse maps eps = -std s, x0 = (x + v s) / a. For an exact model (e.g. a Gaussian's
closed form) all three give the same score up to round-off.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

import torch

from scorefpe._util import parse_choice
from scorefpe.sde import SDE, bcast

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["Param", "parse_param", "to_score_fn", "score_to_output"]


class Param(str, Enum):
    """What the model's output is: the score, the noise eps, or the denoised sample x0."""

    SCORE = "score"
    EPS = "eps"
    X0 = "x0"


def parse_param(value: Param | str) -> Param:
    """Param from a string, case-insensitively ("EPS" -> Param.EPS).

    Raises:
        ValueError: unknown value; the message names it and the valid choices.
    """
    if isinstance(value, str) and not isinstance(value, Param):
        # Lower-case only a spelling that then matches, so an error names the value as given.
        value = value.lower() if value.lower() in {p.value for p in Param} else value
    return parse_choice(Param, value, "parameterisation --param")


def to_score_fn(model: ScoreFn, sde: SDE, param: Param | str) -> ScoreFn:
    """Wrap ``model(x, t)`` (output of the given parameterisation) as ``score_fn(x, t)``.

    Shapes: x (B, ...), t (B,); the output is shaped like x. Cost: one model call. At t where
    std(t) = 0 (t = 0) the eps and x0 conversions divide by zero: evaluate at t > 0.

    Raises:
        ValueError: unknown ``param``.
    """
    p = parse_param(param)
    if p is Param.SCORE:
        return model

    if p is Param.EPS:

        def score_from_eps(x: Tensor, t: Tensor) -> Tensor:
            return -model(x, t) / bcast(sde.marginal_std(t), x)

        return score_from_eps

    def score_from_x0(x: Tensor, t: Tensor) -> Tensor:
        a = bcast(sde.mean_coeff(t), x)
        v = bcast(sde.marginal_var(t), x)
        return (a * model(x, t) - x) / v

    return score_from_x0


def score_to_output(score_fn: ScoreFn, sde: SDE, param: Param | str) -> ScoreFn:
    """The inverse of `to_score_fn`: turn a score into an eps- or x0-predicting model.

    eps_hat = -std(t) s, x0_hat = (x + v(t) s) / a(t). Used to build exact eps/x0 models from
    closed-form scores (examples, tests).
    """
    p = parse_param(param)
    if p is Param.SCORE:
        return score_fn
    if p is Param.EPS:
        return lambda x, t: -bcast(sde.marginal_std(t), x) * score_fn(x, t)
    return lambda x, t: (x + bcast(sde.marginal_var(t), x) * score_fn(x, t)) / bcast(
        sde.mean_coeff(t), x
    )
