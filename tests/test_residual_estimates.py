"""z-tests of the estimated r_FP(t) curve and of its standard error against the exact curve.

    r_FP(t) = 1/D E_{x ~ q_t} ||eps[s](x, t)||^2   (scorefpe.residuals.fp_residual_curve)

The estimated curve uses two independent residual estimates e1, e2 (finite-difference d_t s,
one-probe Hutchinson divergence) and averages <e1, e2> / D, which is unbiased for r_FP up to the
squared O(h^2) stencil error; ||e1||^2 / D would be biased up by tr Cov(e1) / D. Its SE is
std / sqrt(n).

The field: the exact score of a correlated 2-D Gaussian plus p(x) = (sin 8 x2, sin 8 x1) / 8.
The Gaussian score has a constant Jacobian, so all the Hutchinson noise comes from p: grad_x of
v^T J_p v = v1 v2 (cos 8 x2 + cos 8 x1) is 8 v1 v2 (sin 8 x1, sin 8 x2), times g^2 / 2: large
against eps itself, so the e1.e1 bias is large against r_FP (measured on 4096 points: 2.6 to
3800 times r_FP on this grid).
p does not depend on t, so the stencil sees only the Gaussian score's smooth t-dependence (its
error is ~1e-4 of eps here, its square far below the SEs).

Bounds: each z is approximately N(0, 1) (a mean of n >= 128 independent per-point values);
|z| < 4.5 has a false-alarm rate of 7e-6 per value, 1e-4 over the 20 values of the file.
"""

from __future__ import annotations

import math

import pytest
import torch

from scorefpe import GaussianMixture, VESDE, VPSDE, fp_residual
from scorefpe.residuals import Curve, fp_residual_curve, log_t_grid

DT = torch.float64
T_MIN = 1e-3
GRID = log_t_grid(0.01, 1.0, 5)
Z_MAX = 4.5
N_EXACT = 20_000  # reference curve: its SE is 0.5-1 % of r_FP, well below the estimate's
N_EST = 2048
SDES = {"vp": VPSDE(), "ve": VESDE()}

_GAUSS = GaussianMixture(
    torch.tensor([1.0], dtype=DT),
    torch.tensor([[0.5, -1.0]], dtype=DT),
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]]], dtype=DT),
)


def _sample_x0(n: int, g: torch.Generator) -> torch.Tensor:
    return _GAUSS.sample(n, g)


def _model(sde):
    score = _GAUSS.score_fn(sde)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return score(x, t) + torch.stack([torch.sin(8 * x[:, 1]), torch.sin(8 * x[:, 0])], 1) / 8

    return fn


@pytest.fixture(scope="module")
def reference() -> dict[str, Curve]:
    """The exact-mode curve of each SDE on N_EXACT points (seed 1)."""
    return {
        name: fp_residual_curve(
            _model(sde), sde, _sample_x0, GRID, n_points=N_EXACT, t_min=T_MIN,
            generator=torch.Generator().manual_seed(1),
        )
        for name, sde in SDES.items()
    }


def _z(est: Curve, ref: Curve) -> torch.Tensor:
    # Independent points: the variance of the difference is the sum of the two.
    return (est.mean - ref.mean) / (est.se**2 + ref.se**2).sqrt()


@pytest.mark.parametrize("name", sorted(SDES))
def test_estimated_curve_agrees_with_the_exact_curve(name, reference):
    sde = SDES[name]
    ref = reference[name]
    assert bool((ref.se < 0.02 * ref.mean).all())  # the reference is precise
    est = fp_residual_curve(
        _model(sde), sde, _sample_x0, GRID, n_points=N_EST, method="estimated", t_min=T_MIN,
        generator=torch.Generator().manual_seed(2),
    )
    z = _z(est, ref)
    assert float(z.abs().max()) < Z_MAX, z.tolist()


@pytest.mark.parametrize("name", sorted(SDES))
def test_squared_single_estimate_is_many_standard_errors_too_high(name, reference):
    # The test above has power: 1/D ||e1||^2 from the same estimator, averaged over the same
    # number of points, sits > 8 SE above the exact curve at every t (measured 11.5-16 SE at
    # n = 2048, seed 3), so a curve computed from e1.e1 instead of e1.e2 fails |z| < 4.5.
    sde = SDES[name]
    ref = reference[name]
    g = torch.Generator().manual_seed(3)
    means, ses = [], []
    for t in GRID.tolist():
        tt = torch.full((N_EST,), t, dtype=DT)
        x, _ = sde.perturb(_sample_x0(N_EST, g), tt, g)
        e1 = fp_residual(_model(sde), sde, x, tt, method="estimated", generator=g, t_min=T_MIN)
        per = e1.pow(2).sum(-1) / 2
        means.append(per.mean())
        ses.append(per.std() / math.sqrt(N_EST))
    biased = Curve("r_FP biased", GRID, torch.stack(means), torch.stack(ses))
    z = _z(biased, ref)
    assert float(z.min()) > 8, z.tolist()


@pytest.mark.parametrize("method", ["estimated", "exact"])
def test_standard_error_covers_the_exact_value_at_the_nominal_rate(method, reference):
    # Repeated seeds: z_r = (curve_r - reference) / SE, 16 seeds x 5 times on n = 128 points.
    # If SE is the standard error of the mean, z is ~N(0, 1): mean z^2 ~ 1 (its sd for 80
    # values is sqrt(2/80) = 0.16, a little more with the per-point values' heavy tails) and
    # 95 % of |z| < 1.96. An SE sqrt(n) = 11 times too large (std without / sqrt(n)) gives
    # mean z^2 ~ 1/128; one too small, or a biased mean, gives mean z^2 >> 1. Measured (seeds
    # 100-115): mean z^2 0.85 / 1.33, coverage 0.99 / 0.93 (estimated / exact).
    sde = VPSDE()
    ref = reference["vp"]
    zs = []
    for seed in range(100, 116):
        cur = fp_residual_curve(
            _model(sde), sde, _sample_x0, GRID, n_points=128, method=method, t_min=T_MIN,
            generator=torch.Generator().manual_seed(seed),
        )
        zs.append(_z(cur, ref))
    z = torch.cat(zs)
    mean_z2 = float(z.pow(2).mean())
    coverage = float((z.abs() < 1.96).double().mean())
    assert 0.5 < mean_z2 < 2.0, mean_z2
    assert coverage > 0.85, coverage


def test_estimated_curve_of_the_true_score_is_zero_within_its_error():
    # For the true score of a 2-component mixture the exact r_FP is round-off; the estimated
    # curve is pure probe noise around zero (VP: the stencil's squared error is < 1e-3 SE here;
    # for VE at t = T it is not: the backward stencil's (h^2 / 3 s''')^2 ~ 1e-9 exceeds the
    # tiny SE there, which is why this test uses VP).
    sde = VPSDE()
    gm = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=DT),
        torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=DT),
        torch.tensor([[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]]], dtype=DT),
    )
    kw = dict(n_points=N_EST, t_min=T_MIN)
    exact = fp_residual_curve(gm.score_fn(sde), sde, gm.sample, GRID,
                              generator=torch.Generator().manual_seed(4), **kw)
    est = fp_residual_curve(gm.score_fn(sde), sde, gm.sample, GRID, method="estimated",
                            generator=torch.Generator().manual_seed(5), **kw)
    assert float(exact.mean.abs().max()) < 1e-20
    z = est.mean / est.se
    assert float(z.abs().max()) < Z_MAX, z.tolist()
