"""The shared helpers of every per-t curve (`time_grid`, `per_t_curve`) and the one meaning of
``generator=None`` across the package: torch's global RNG (issue 17)."""

from __future__ import annotations

import math

import pytest
import torch

from problems import linear_field
from scorefpe.data.mixtures import GaussianMixture
from scorefpe.evaluation.diagnostics import jacobian_frobenius_curve
from scorefpe.metrics.conservativity import curl_mse_curve
from scorefpe.pinn.evaluate import score_error_curve, sliced_wasserstein
from scorefpe.sde import make_sde
from scorefpe.residuals import (
    Spacing,
    dsm_residual_curve,
    fp_residual_curve,
    log_t_grid,
    per_t_curve,
    perturbed_points,
    time_grid,
)
from scorefpe.sampling.likelihood import probability_flow_likelihood
from scorefpe.sde import VPSDE

DT = torch.float64


# ---------------------------------------------------------------------------------------------
# time_grid
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t_min, t_max, n", [(1e-3, 1.0, 8), (2e-3, 0.7, 5), (1e-5, 1.0, 17)])
def test_log_grid_has_exact_ends_and_equal_ratios(t_min, t_max, n):
    t = time_grid(t_min, t_max, n)
    assert t.dtype == DT and t.shape == (n,)
    assert float(t[0]) == t_min and float(t[-1]) == t_max  # pinned, not 10 ** log10(t)
    ratio = (t_max / t_min) ** (1 / (n - 1))
    assert torch.allclose(t[1:] / t[:-1], torch.full((n - 1,), ratio, dtype=DT), rtol=1e-13)
    assert torch.equal(log_t_grid(t_min, t_max, n), t)


def test_uniform_grid_has_equal_steps_and_keeps_dtype():
    t = time_grid(0.1, 1.0, 7, Spacing.UNIFORM)
    assert torch.allclose(t.diff(), torch.full((6,), 0.15, dtype=DT), rtol=1e-13)
    assert float(t[0]) == 0.1 and float(t[-1]) == 1.0
    assert time_grid(0.1, 1.0, 7, "uniform", dtype=torch.float32).dtype == torch.float32
    assert time_grid(1e-4, 1.0, 9, dtype=torch.float32)[0].item() == pytest.approx(1e-4, rel=1e-7)


@pytest.mark.parametrize("args", [(0.0, 1.0, 5), (0.5, 0.5, 5), (0.1, 1.0, 1), (0.1, 1.0, True),
                                  (0.1, 1.0, 4.0)])
def test_time_grid_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="grid needs"):
        time_grid(*args)
    with pytest.raises(ValueError, match="grid needs"):
        time_grid(*args, Spacing.UNIFORM)


def test_time_grid_rejects_an_unknown_spacing():
    with pytest.raises(ValueError, match="spacing 'cubic'"):
        time_grid(0.1, 1.0, 4, "cubic")


# ---------------------------------------------------------------------------------------------
# per_t_curve
# ---------------------------------------------------------------------------------------------
def test_per_t_curve_mean_and_se_of_given_values():
    """values independent of x: the curve is their mean and sd / sqrt(n) at every t."""
    v = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=DT)
    grid = torch.tensor([0.2, 0.6], dtype=DT)
    c = per_t_curve("v", VPSDE(), lambda n, g: torch.zeros(n, 2, dtype=DT), grid,
                    lambda x, t, z: v + t, n_points=4, generator=torch.Generator().manual_seed(0))
    assert c.name == "v" and torch.equal(c.t, grid)
    assert torch.allclose(c.mean, 3.5 + grid, rtol=1e-15)
    sd = math.sqrt(sum((a - 3.5) ** 2 for a in (1, 2, 4, 7)) / 3)  # n - 1 in the variance
    assert torch.allclose(c.se, torch.full((2,), sd / 2, dtype=DT), rtol=1e-14)


def test_per_t_curve_draws_points_from_q_t():
    """x0 = 0 under VP: x = std(t) z, so E||x||^2 / D = var(t); a z-test at 5 SE per t (the
    estimate of each t is an average of n = 4000 chi-square / D values)."""
    sde = VPSDE()
    grid = time_grid(1e-3, 1.0, 6)
    c = per_t_curve("var", sde, lambda n, g: torch.zeros(n, 3, dtype=DT), grid,
                    lambda x, t, z: x.pow(2).sum(-1) / 3, n_points=4000,
                    generator=torch.Generator().manual_seed(3))
    var = sde.marginal_std(grid) ** 2
    assert torch.all((c.mean - var).abs() < 5 * c.se)
    # the noise the values see is the noise of the points
    x, t, z = perturbed_points(sde, lambda n, g: torch.ones(n, 2, dtype=DT), 0.4, 5,
                               torch.Generator().manual_seed(0))
    assert torch.allclose(x, sde.mean_coeff(t)[:, None] + sde.marginal_std(t)[:, None] * z,
                          rtol=1e-14)
    assert torch.equal(t, torch.full((5,), 0.4, dtype=DT))


def test_perturbed_points_casts_x0():
    x, t, _ = perturbed_points(VPSDE(), lambda n, g: torch.zeros(n, 2, dtype=DT), 0.5, 3,
                               torch.Generator().manual_seed(0), dtype=torch.float32)
    assert x.dtype == t.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# generator=None is torch's global RNG everywhere
# ---------------------------------------------------------------------------------------------
def _mixture() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.5, 0.5], dtype=DT),
                           torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=DT),
                           torch.tensor([0.3, 0.6], dtype=DT))


def _random_consumers():
    """name -> f(generator) of every library function that takes an optional generator and
    used to replace None by a hidden torch.Generator().manual_seed(0)."""
    sde = VPSDE()
    mix = _mixture()
    score = mix.score_fn(sde)
    rot = linear_field(torch.tensor([[-1.0, 0.7], [-0.7, -1.0]], dtype=DT), torch.zeros(2, dtype=DT))
    grid = torch.tensor([0.1, 0.5], dtype=DT)
    a = torch.randn(50, 2, generator=torch.Generator().manual_seed(9), dtype=DT)
    x = mix.sample(4, torch.Generator().manual_seed(8))
    return {
        "fp_residual_curve": lambda g: fp_residual_curve(
            rot, sde, mix.sample, grid, n_points=8, method="estimated", generator=g).mean,
        "dsm_residual_curve": lambda g: dsm_residual_curve(
            score, sde, mix.sample, grid, n_points=8, generator=g).mean,
        "curl_mse_curve": lambda g: curl_mse_curve(
            rot, sde, mix.sample, grid, n_points=8, method="hutchinson", generator=g).mean,
        "jacobian_frobenius_curve": lambda g: jacobian_frobenius_curve(
            score, sde, mix.sample, grid, n_points=8, generator=g).mean,
        "score_error_curve": lambda g: score_error_curve(
            rot, score, sde, mix.sample, grid, n_points=8, generator=g, dtype=DT),
        "sliced_wasserstein": lambda g: torch.tensor(sliced_wasserstein(a, a + 1.0, n_proj=8,
                                                                        generator=g)),
        "probability_flow_likelihood": lambda g: probability_flow_likelihood(
            score, sde, x, divergence="hutchinson", rtol=1e-3, atol=1e-3, generator=g).log_prob,
    }


CONSUMERS = sorted(_random_consumers())


@pytest.mark.parametrize("name", CONSUMERS)
def test_generator_none_draws_from_the_global_rng(name):
    """With None, the draws are those of torch's default generator: after torch.manual_seed(s)
    they equal the draws of a fresh torch.Generator seeded with s, differ for another s, and
    advance the global state (no hidden fixed seed)."""
    f = _random_consumers()[name]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(11)
        from_global = f(None)
        after = torch.rand(1)
        torch.manual_seed(11)
        assert not torch.equal(torch.rand(1), after)  # f consumed global random numbers
        assert torch.equal(from_global, f(torch.Generator().manual_seed(11)))
        torch.manual_seed(12)
        assert not torch.equal(f(None), from_global)
    finally:
        torch.random.set_rng_state(state)


def test_fp_residual_curve_never_evaluates_below_its_grid():
    """An eps-parameterised VP network divides by std(t), which is 0 at t = 0. The estimated
    r_FP curve's default t_min is the grid's smallest t, so a grid starting at 1e-3 (where the
    default nonuniform stencil's h_s = 1e-3 would reach t = 0) gives a finite curve and the
    model is never called below 1e-3; the old default t_min = 0 gave non-finite values."""
    sde = make_sde("vp")
    seen: list[float] = []

    def eps_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(float(t.min()))
        std = sde.marginal_std(t).reshape(-1, *([1] * (x.dim() - 1)))
        return -torch.tanh(x) / std

    grid = torch.tensor([1e-3, 1e-2], dtype=torch.float64)
    sample = lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64)  # noqa: E731
    curve = fp_residual_curve(eps_score, sde, sample, grid, n_points=4, method="estimated",
                              generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(curve.mean).all()) and min(seen) >= 1e-3 * (1 - 1e-12)
    old = fp_residual_curve(eps_score, sde, sample, grid, n_points=4, method="estimated",
                            t_min=0.0,
                            generator=torch.Generator().manual_seed(0))
    assert not bool(torch.isfinite(old.mean).all())
