"""Model parameterisations and their conversion to a score, written once.

A network may predict the score s, the noise eps, the clean sample x0_hat, or the velocity
v_hat. With the Gaussian transition kernel x(t) = a(t) x0 + std(t) z of a linear SDE
(var = std^2), Tweedie's formula E[x0 | x(t)] = (x + var s) / a and E[z | x(t)] = -std s give
(Song et al. 2021; Ho et al. 2020)

    score: s = model(x, t)
    eps:   s = -eps_hat / std(t)
    x0:    s = (a(t) x0_hat - x) / var(t)

v-prediction (Salimans & Ho 2022, eq. for v with alpha = a(t), sigma = std(t)): the target is
v = a z - std x0. With x = a x0 + std z, eliminating x0 gives a v + std x = (a^2 + var) z, so

    v:     eps_hat = (a v_hat + std x) / (a^2 + var),   s = -(a v_hat + std x) / (std (a^2 + var))

For VP a^2 + var = 1 (diffusers' ``v_prediction``: eps = a v + std x). For VE (a = 1) the same
unnormalised v = z - std x0 is meant; a network trained on the normalised target
v / sqrt(a^2 + var) (e.g. -F of EDM with sigma_data = 1) must be rescaled first.

The inverse maps: eps = -std s, x0 = (x + var s) / a, v = -std ((a^2 + var) s + x) / a. For an
exact model (e.g. a Gaussian's closed form) all four give the same score up to round-off.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

import torch

from scorefpe._util import parse_choice
from scorefpe.sde import SDE, bcast

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["PARAM_ALIASES", "Param", "parse_param", "to_score_fn", "score_to_output"]


class Param(str, Enum):
    """What the model's output is: the score, the noise eps, the denoised sample x0, or the
    velocity v = a(t) z - std(t) x0."""

    SCORE = "score"
    EPS = "eps"
    X0 = "x0"
    V = "v"


# Other libraries' names for the same parameterisations (diffusers' ``prediction_type``).
PARAM_ALIASES: dict[str, Param] = {
    "epsilon": Param.EPS,
    "sample": Param.X0,
    "v_prediction": Param.V,
}


def parse_param(value: Param | str) -> Param:
    """Param from a string, case-insensitively ("EPS" -> Param.EPS), accepting diffusers'
    names as aliases ("epsilon" -> EPS, "sample" -> X0, "v_prediction" -> V).

    Raises:
        ValueError: unknown value; the message names it and the valid choices.
    """
    if isinstance(value, Param):
        return value
    if isinstance(value, str):
        low = value.lower()
        if low in PARAM_ALIASES:
            return PARAM_ALIASES[low]
        # Lower-case only a spelling that then matches, so an error names the value as given.
        value = low if low in {p.value for p in Param} else value
    try:
        return parse_choice(Param, value, "parameterisation --param")
    except ValueError as err:
        aliases = ", ".join(f"{k!r} = {p.value!r}" for k, p in PARAM_ALIASES.items())
        raise ValueError(f"{err} (aliases: {aliases})") from None


def to_score_fn(model: ScoreFn, sde: SDE, param: Param | str) -> ScoreFn:
    """Wrap ``model(x, t)`` (output of the given parameterisation) as ``score_fn(x, t)``.

    Shapes: x (B, ...), t (B,); the output is shaped like x. Cost: one model call. At t where
    std(t) = 0 (t = 0) the eps, x0 and v conversions divide by zero: evaluate at t > 0.

    Raises:
        ValueError: unknown ``param``.
    """
    p = parse_param(param)
    if p is Param.SCORE:
        return model

    if p is Param.EPS:

        def score_from_eps(x: Tensor, t: Tensor) -> Tensor:
            return -model(x, t) / bcast(sde.marginal_std(t), x)

        score_from_eps.__wrapped__ = model  # type: ignore[attr-defined]  # model_dtype looks through
        return score_from_eps

    if p is Param.V:

        def score_from_v(x: Tensor, t: Tensor) -> Tensor:
            a = bcast(sde.mean_coeff(t), x)
            var = bcast(sde.marginal_var(t), x)
            std = var.sqrt()
            return -(a * model(x, t) + std * x) / (std * (a * a + var))

        score_from_v.__wrapped__ = model  # type: ignore[attr-defined]  # model_dtype looks through
        return score_from_v

    def score_from_x0(x: Tensor, t: Tensor) -> Tensor:
        a = bcast(sde.mean_coeff(t), x)
        v = bcast(sde.marginal_var(t), x)
        return (a * model(x, t) - x) / v

    score_from_x0.__wrapped__ = model  # type: ignore[attr-defined]  # model_dtype looks through
    return score_from_x0


def score_to_output(score_fn: ScoreFn, sde: SDE, param: Param | str) -> ScoreFn:
    """The inverse of `to_score_fn`: turn a score into an eps-, x0- or v-predicting model.

    eps_hat = -std(t) s, x0_hat = (x + var(t) s) / a(t), v_hat = -std ((a^2 + var) s + x) / a.
    Used to build exact eps/x0/v models from closed-form scores (examples, tests).
    """
    p = parse_param(param)
    if p is Param.SCORE:
        return score_fn
    if p is Param.EPS:
        return lambda x, t: -bcast(sde.marginal_std(t), x) * score_fn(x, t)
    if p is Param.V:

        def v_from_score(x: Tensor, t: Tensor) -> Tensor:
            a = bcast(sde.mean_coeff(t), x)
            var = bcast(sde.marginal_var(t), x)
            return -var.sqrt() * ((a * a + var) * score_fn(x, t) + x) / a

        return v_from_score
    return lambda x, t: (x + bcast(sde.marginal_var(t), x) * score_fn(x, t)) / bcast(
        sde.mean_coeff(t), x
    )
