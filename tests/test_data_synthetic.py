import math

import numpy as np
import pytest
import torch
from scipy import stats

from scorefpe import GaussianMixture, VESDE, VPSDE, get_dataset
from scorefpe.operators import fp_operator, fp_residual, scalar_fp_residual, time_derivative

DT = torch.float64


def test_mixture_log_prob_matches_scipy():
    g = torch.Generator().manual_seed(0)
    gm = get_dataset("gmm2d").truth
    sde = VPSDE()
    t = torch.full((7,), 0.2, dtype=DT)
    x = torch.randn(7, 2, generator=g, dtype=DT) * 4
    a = float(sde.mean_coeff(t[:1]))
    v = float(sde.marginal_var(t[:1]))
    ref = np.log(sum(
        w * stats.multivariate_normal(a * np.asarray(m), a**2 * np.asarray(c) + v * np.eye(2)).pdf(x.numpy())
        for w, m, c in zip([0.2, 0.8], gm.means.tolist(), gm.covariances.tolist())
    ))
    torch.testing.assert_close(gm.log_prob(x, t, sde), torch.tensor(ref), rtol=1e-12, atol=1e-12)


def test_mixture_samples_have_the_right_moments():
    ds = get_dataset("gmm2d")
    x = ds.sample(40000, torch.Generator().manual_seed(1))
    mean = 0.2 * torch.tensor([-5.0, -5.0]) + 0.8 * torch.tensor([5.0, 5.0])
    var = 1 + 0.2 * 0.8 * 100  # within-component 1 plus between-component variance
    se = math.sqrt(var / 40000)
    assert float((x.mean(0) - mean.double()).abs().max()) < 5 * se
    assert float((x.var(0) - var).abs().max()) < 5 * var * math.sqrt(2 / 40000) * 2


def test_empirical_distribution_is_exact():
    # Zero covariances: the mixture of Dirac masses at the data points ("ideal denoiser").
    pts = torch.tensor([[0.0, 1.0], [2.0, -1.0], [1.0, 1.0]], dtype=DT)
    gm = GaussianMixture(torch.ones(3, dtype=DT), pts, None)
    sde = VESDE()
    t = torch.full((5,), 0.3, dtype=DT)
    x = torch.randn(5, 2, dtype=DT)
    eps = fp_residual(gm.score_fn(sde), sde, x, t)
    assert float(eps.abs().max()) < 1e-10 * (1 + float(gm.score(x, t, sde).abs().max()))
    full = GaussianMixture(torch.ones(3, dtype=DT), pts, torch.zeros(3, 2, 2, dtype=DT))
    torch.testing.assert_close(full.score(x, t, sde), gm.score(x, t, sde), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde,tv", [(VPSDE(), 0.05), (VESDE(), 0.3)], ids=["vp", "ve"])
def test_checkerboard_exact_score(sde, tv):
    # t chosen so the marginal std is ~0.15 for both SDEs (0.17 VP, 0.13 VE): the box edges are
    # blurred but not washed out, so |s| and d_t s are O(1)-O(100) at the sampled points (at VE
    # t = 0.05, std 0.01, the points sit in box interiors where s ~ 1e-8 and any residual passes).
    ds = get_dataset("checkerboard")
    g = torch.Generator().manual_seed(0)
    t = torch.full((16,), tv, dtype=DT)
    x, _ = sde.perturb(ds.sample(16, g), t, g)
    sf = ds.score_fn(sde)
    s = sf(x, t)
    assert float(s.abs().max()) > 1.0  # not vacuous
    h = 1e-6
    fd = torch.stack([
        (ds.log_prob(x + h * e, t, sde) - ds.log_prob(x - h * e, t, sde)) / (2 * h)
        for e in torch.eye(2, dtype=DT)
    ], 1)
    # Central difference of log q: round-off eps |log q| / h ~ 2e-16 * 10 / 1e-6 = 2e-9 plus
    # truncation h^2/6 |d^3 log q| ~ 1e-12 / std^3 < 1e-9; 1e-7 leaves 50x headroom.
    torch.testing.assert_close(s, fd, rtol=0, atol=1e-7)
    # The true score's residuals vanish up to float64 round-off: eps = d_t s - grad_x L[s] is a
    # difference of terms of size ~max |d_t s|, computed through log-differences of normal CDFs;
    # observed 2e-16..6e-16 of that size, bound 1e-12 (4500 x eps of conditioning headroom). A
    # wrong score (the true one evaluated at 1.01 t) gives 2e-2 (VP) and 6e-2 (VE).
    eps = fp_residual(sf, sde, x, t)
    dts = time_derivative(sf, x, t)
    assert float(eps.abs().max()) < 1e-12 * float(dts.abs().max())
    r = scalar_fp_residual(sf, ds.log_prob_fn(sde), sde, x, t)
    lop = fp_operator(sf, sde, x, t)
    assert float(r.abs().max()) < 1e-12 * float(lop.abs().max())


def test_checkerboard_density_integrates_to_one():
    ds = get_dataset("checkerboard")
    sde = VPSDE()
    n = 400
    u = torch.linspace(-6, 6, n, dtype=DT)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([xx.ravel(), yy.ravel()], 1)
    t = torch.full((pts.shape[0],), 0.05, dtype=DT)
    mass = float(ds.log_prob(pts, t, sde).exp().sum()) * float(u[1] - u[0]) ** 2
    assert abs(mass - 1) < 2e-3  # Riemann sum on a 0.03 grid of a density with O(1) jumps blurred


@pytest.mark.parametrize("name", ["gmm1d", "gmm2d", "gmm8", "checkerboard", "swissroll"])
def test_named_sets_sample(name):
    ds = get_dataset(name)
    x = ds.sample(50, torch.Generator().manual_seed(0))
    assert x.shape == (50, ds.dim) and torch.isfinite(x).all()


def test_bad_names_and_inputs():
    with pytest.raises(ValueError, match="'mnist3d'"):
        get_dataset("mnist3d")
    with pytest.raises(ValueError, match="no closed-form"):
        get_dataset("swissroll").score(torch.zeros(1, 2), torch.ones(1), VPSDE())
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 2.0], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([-1.0]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        get_dataset("gmm2d").score(torch.zeros(3, 3, dtype=DT), torch.ones(3, dtype=DT), VPSDE())
