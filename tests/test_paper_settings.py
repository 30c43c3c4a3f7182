"""FP-Diffusion's settings as options (issue 16): Song's VE variance convention and the DSM
weighting lambda(t) = g(t)^2 with the factor 1/2."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from scorefpe.data.synthetic import get_dataset
from scorefpe.experiments.synthetic_bench import SyntheticRunConfig, build_model
from scorefpe.operators import fp_residual
from scorefpe.penalties import PenaltyConfig
from scorefpe.sde import VESDE, VPSDE, VEVariance
from scorefpe.training import DSMWeighting, StepContext, dsm_objective, dsm_time_weight

F64 = torch.float64


def test_song_variance_is_sigma_squared_and_exact_is_unchanged():
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=F64)
    song, exact = VESDE(variance="song"), VESDE()
    torch.testing.assert_close(song.marginal_var(t), song.sigma(t) ** 2, rtol=1e-15, atol=0)
    torch.testing.assert_close(exact.marginal_var(t), exact.sigma(t) ** 2 - 1e-4, rtol=1e-13, atol=0)
    assert song.variance is VEVariance.SONG and exact.variance is VEVariance.EXACT
    with pytest.raises(ValueError, match="VE variance"):
        VESDE(variance="sigma")


@pytest.mark.parametrize("variance", ["exact", "song"])
def test_both_conventions_satisfy_dv_dt_equals_g_squared(variance):
    # The Gaussian kernel N(x0, v(t) I) solves the VE FPE iff dv/dt = g^2 (f = 0).
    sde = VESDE(variance=variance)
    t = torch.linspace(1e-3, 1.0, 9, dtype=F64).requires_grad_(True)
    (dv,) = torch.autograd.grad(sde.marginal_var(t).sum(), t)
    torch.testing.assert_close(dv, sde.diffusion(t.detach()) ** 2, rtol=1e-12, atol=0)


@dataclass(frozen=True)
class _WrongVE(VESDE):
    """v = 1.1 sigma^2: dv/dt = 1.1 g^2, not a solution of the FPE of (f, g)."""

    def marginal_var(self, t):
        return 1.1 * self.sigma(t) ** 2


def _relative_residual(sde):
    ds = get_dataset("gmm2d")
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0.05, 0.9, 64, dtype=F64)
    x, _ = sde.perturb(ds.sample(64, g), t, g)
    fn = ds.score_fn(sde)
    eps = fp_residual(fn, sde, x, t)
    # Scale: g^2 times the score's size over the smallest std, a bound on each term of eps.
    scale = sde.diffusion(t) ** 2 * fn(x, t).norm(dim=1) / sde.marginal_var(t)
    return float((eps.norm(dim=1) / scale).max())


def test_song_closed_form_is_an_exact_solution_of_its_fpe():
    # Exact residual of the data set's closed-form score under Song's convention: round-off.
    assert _relative_residual(VESDE(variance="song")) < 1e-10
    assert _relative_residual(VESDE()) < 1e-10
    assert _relative_residual(_WrongVE(variance="song")) > 1e-3  # the check can fail


def test_run_config_reaches_the_sde_and_validates():
    _, sde, _ = build_model(SyntheticRunConfig(dataset="gmm2d", ve_variance="song"))
    assert sde.variance is VEVariance.SONG
    with pytest.raises(ValueError, match="VE SDE only"):
        SyntheticRunConfig(sde="vp", ve_variance="song")
    with pytest.raises(ValueError, match="DSM weighting"):
        SyntheticRunConfig(dsm_weighting="g2")


def test_g2half_weight_values():
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=F64)
    log_ratio = math.log(50.0 / 0.01)
    song = VESDE(variance="song")
    # Song: g^2 / (2 sigma^2) = log(sigma_max / sigma_min) = 8.52 at every t.
    torch.testing.assert_close(dsm_time_weight(song, t, "g2half"),
                               torch.full_like(t, log_ratio), rtol=1e-13, atol=0)
    ex = VESDE()
    s2 = ex.sigma(t) ** 2
    torch.testing.assert_close(dsm_time_weight(ex, t, DSMWeighting.G2_HALF),
                               log_ratio * s2 / (s2 - 1e-4), rtol=1e-12, atol=0)
    vp = VPSDE()
    torch.testing.assert_close(dsm_time_weight(vp, t, "g2half"),
                               vp.beta(t) / (2 * vp.marginal_var(t)), rtol=1e-13, atol=0)
    assert torch.equal(dsm_time_weight(vp, t, "sigma2"), torch.ones_like(t))


def test_objective_g2half_reweights_only_the_dsm_term():
    cfg = SyntheticRunConfig(dataset="gmm2d", ve_variance="song")
    model, sde, ds = build_model(cfg)
    x0 = ds.sample(32, torch.Generator().manual_seed(1)).float()
    pcfg = PenaltyConfig(penalty="fpd", lam=1.0, t_min=1e-3, alpha=1e-2)
    ctx = StepContext(seed=3, step=0)
    a = dsm_objective(sde, pcfg)(model, x0, ctx)
    b = dsm_objective(sde, pcfg, "g2half")(model, x0, ctx)
    # Song's VE: the weight is the constant log(5000) = 8.52.
    torch.testing.assert_close(b.terms["dsm"], math.log(5000.0) * a.terms["dsm"], rtol=1e-5, atol=0)
    torch.testing.assert_close(b.terms["fpd"], a.terms["fpd"], rtol=1e-5, atol=1e-7)
    assert b.weights == a.weights
