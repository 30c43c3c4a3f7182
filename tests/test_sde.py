import math

import pytest
import torch
from scipy import stats

from scorefpe.sde import SubVPSDE, VESDE, VPSDE, bcast, make_sde

SDES = [VPSDE(), VESDE(), SubVPSDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_marginal_moments_solve_their_odes(sde):
    # For f = c(t) x: da/dt = c a and dv/dt = 2 c v + g^2. Central differences with h = 1e-5 in
    # float64 have truncation error ~h^2 |v'''| ~ 1e-10 * 1e4 and round-off ~1e-16 / h.
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-5
    da = (sde.mean_coeff(t + h) - sde.mean_coeff(t - h)) / (2 * h)
    dv = (sde.marginal_var(t + h) - sde.marginal_var(t - h)) / (2 * h)
    c, a, v, g2 = sde.drift_coeff(t), sde.mean_coeff(t), sde.marginal_var(t), sde.diffusion(t) ** 2
    torch.testing.assert_close(da, c * a, rtol=1e-7, atol=0)
    torch.testing.assert_close(dv, 2 * c * v + g2, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_marginal_starts_at_the_data(sde):
    t0 = torch.zeros(3, dtype=torch.float64)
    assert torch.all(sde.marginal_var(t0) == 0)
    assert torch.all(sde.mean_coeff(t0) == 1)


def test_ve_variance_is_exact_not_songs():
    sde = VESDE()
    t = torch.tensor([0.3], dtype=torch.float64)
    assert float(sde.marginal_var(t)) == pytest.approx(float(sde.sigma(t)) ** 2 - 0.01**2, rel=1e-14)


def test_vp_small_t_variance_keeps_relative_accuracy():
    # 1 - a^2 in plain float64 loses all digits at t = 1e-9; expm1 keeps them: v ~ beta_min t.
    sde = VPSDE()
    t = torch.tensor([1e-9], dtype=torch.float64)
    assert float(sde.marginal_var(t)) == pytest.approx(0.1e-9, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 3), (5, 1, 4, 4)])
def test_shapes_and_dtypes(dtype, shape):
    for sde in SDES:
        x = torch.randn(shape, dtype=dtype)
        t = torch.full((shape[0],), 0.4, dtype=dtype)
        assert sde.drift(x, t).shape == x.shape and sde.drift(x, t).dtype == dtype
        assert sde.div_drift(x, t).shape == (shape[0],)
        mean, std = sde.marginal(x, t)
        assert mean.shape == x.shape and std.shape == (shape[0],) and std.dtype == dtype
        xt, z = sde.perturb(x, t, torch.Generator().manual_seed(0))
        torch.testing.assert_close(xt, mean + bcast(std, x) * z)
        assert sde.prior_sample(shape, dtype=dtype).dtype == dtype


def test_vp_div_drift_counts_every_entry():
    sde = VPSDE()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    t = torch.tensor([0.5, 0.5], dtype=torch.float64)
    beta = 0.1 + 0.5 * 19.9
    torch.testing.assert_close(sde.div_drift(x, t), torch.full((2,), -784 / 2 * beta, dtype=torch.float64))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_prior_log_prob_matches_scipy(sde):
    x = torch.randn(4, 3, dtype=torch.float64) * 2
    ref = stats.multivariate_normal(mean=[0] * 3, cov=sde.prior_std() ** 2).logpdf(x.numpy())
    torch.testing.assert_close(sde.prior_log_prob(x), torch.tensor(ref), rtol=1e-12, atol=1e-12)


def test_bad_parameters_and_names():
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="'xx'"):
        make_sde("xx")
    assert isinstance(make_sde("VP"), VPSDE)
    assert math.isclose(make_sde("ve", sigma_max=10.0).sigma_max, 10.0)
