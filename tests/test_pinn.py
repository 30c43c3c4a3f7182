"""Tests of the score-FPE Cauchy solver (scorefpe.pinn) and `scorefpe cauchy`."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from scorefpe.data.synthetic import get_dataset
from scorefpe.models.mlp import MLPConfig
from scorefpe.pinn import (
    CauchyConfig,
    PreconditionedScore,
    TrainState,
    cauchy_loss,
    data_scale,
    evals_per_step,
    make_loss,
    mode_weights,
    sliced_wasserstein,
    train,
)
from scorefpe.sde import make_sde

DT = torch.float64


def _setup(sde_name="ve", dataset="gmm2d", **kw):
    ds = get_dataset(dataset)
    sde = make_sde(sde_name)
    cfg = CauchyConfig(dataset=dataset, sde=sde_name, batch=64, batch_ic=64, hidden=16, depth=2, **kw)
    sd = data_scale(ds.sample(4000, torch.Generator().manual_seed(5)))
    model = PreconditionedScore(MLPConfig(dim=ds.dim, hidden=16, depth=2), sde, sd, seed=0)
    return ds, sde, cfg, model


@pytest.mark.parametrize("sde_name, collocation", [("ve", "data"), ("vp", "data"), ("ve", "mixed")])
def test_exact_score_has_zero_residual_in_the_solver_loss(sde_name, collocation):
    """The closed-form GMM score solves the score FPE: the solver's own (weighted) residual term
    is round-off, and its initial-condition term exactly 0; a 1 % perturbation is not zero."""
    ds, sde, cfg, model = _setup(sde_name, collocation=collocation)
    truth = ds.truth
    true_fn = lambda x, t: truth.score(x, t, sde)  # noqa: E731
    terms = cauchy_loss(true_fn, model.scale, sde, ds.sample, true_fn, cfg, torch.Generator().manual_seed(1), DT)
    # Every term of w(t) eps is O(1) after the natural weighting (module docstring); float64
    # round-off of O(1) terms with O(10) cancelling pieces is < 1e-12, squared < 1e-24.
    assert float(terms["residual"]) < 1e-20
    assert float(terms["initial"]) == 0.0
    bad = lambda x, t: 1.01 * truth.score(x, t, sde)  # noqa: E731
    terms_bad = cauchy_loss(bad, model.scale, sde, ds.sample, true_fn, cfg, torch.Generator().manual_seed(1), DT)
    assert float(terms_bad["residual"]) > 1e-8
    assert float(terms_bad["initial"]) > 1e-6


def test_estimated_residual_of_exact_score_is_probe_variance_only():
    """For the exact score, eps = 0, so the estimated residual term is the Hutchinson variance
    (divided by K probes) plus the stencil's O(h_s h_d) bias squared: K = 64 probes must give
    about 1/64 of K = 1 (asserted: below 1/16, same collocation points and seeds)."""
    ds, sde, cfg, model = _setup("ve", residual="estimated")
    true_fn = lambda x, t: ds.truth.score(x, t, sde)  # noqa: E731
    r = {}
    for k in (1, 64):
        c = CauchyConfig(batch=64, batch_ic=8, residual="estimated", n_probes=k)
        r[k] = float(cauchy_loss(true_fn, model.scale, sde, ds.sample, true_fn, c,
                                 torch.Generator().manual_seed(2), DT)["residual"])
    assert r[64] < r[1] / 16, r


def test_a_few_solver_steps_reduce_the_loss():
    """Natural weighting: the untrained net's t-dependence near t_min makes the weighted residual
    ~1e6; 40 Adam steps must remove most of it (with weighting none, a 16-unit net first sits on
    the initial-condition plateau of docs/results/cauchy.md for hundreds of steps)."""
    ds, sde, cfg, model = _setup("ve", steps=40, lr=1e-3, weighting="natural")
    loss_fn = make_loss(model, sde, ds.sample, ds.score_fn(sde), cfg)

    def fixed_loss() -> float:  # the same draw before and after: a deterministic comparison
        with torch.enable_grad():
            return float(loss_fn(torch.Generator().manual_seed(99))["total"])

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = train(model, loss_fn, opt, torch.Generator().manual_seed(0), cfg, TrainState())
    after = fixed_loss()
    assert state.step == 40 and len(state.history) == 40
    assert after < 0.2 * before, (before, after)  # measured: 7.3e6 -> 5.7e5


def test_dsm_baseline_uses_the_same_number_of_evaluations():
    ds, sde, cfg, model = _setup("ve")
    n = evals_per_step(cfg, 2)
    assert n == 3 * 64 + 64  # (D + 1) B + B_ic for the exact residual in D = 2
    assert evals_per_step(CauchyConfig(batch=10, batch_ic=5, residual="estimated", n_probes=2), 2) == 55


def test_preconditioned_model_starts_at_the_large_t_gaussian_score():
    """With the net's output zeroed, s~ = -x / c(t)^2, the score of N(0, c^2 I)."""
    ds, sde, cfg, model = _setup("vp")
    with torch.no_grad():
        model.net.net.out.weight.zero_()
        model.net.net.out.bias.zero_()
    x = torch.randn(7, 2)
    t = torch.rand(7) * 0.9 + 0.05
    c2 = sde.mean_coeff(t) ** 2 * model.sigma_data**2 + sde.marginal_var(t)
    torch.testing.assert_close(model(x, t), -x / c2[:, None])


def test_sliced_wasserstein_of_a_shift():
    """SW2 between a sample and its shift by d is sqrt(E (theta.d)^2) = |d| / sqrt(D) for theta
    uniform on the sphere; with 4000 projections the MC relative error is ~ sqrt(2/4000) ~ 2 %."""
    a = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    d = torch.tensor([3.0, 4.0], dtype=DT)
    sw = sliced_wasserstein(a, a + d, n_proj=4000)
    assert abs(sw - 5 / math.sqrt(2)) < 0.1 * 5 / math.sqrt(2)
    assert sliced_wasserstein(a, a.flip(0)) < 1e-12  # same empirical measure
    with pytest.raises(ValueError):
        sliced_wasserstein(a, a[:10])


def test_mode_weights_nearest_mean():
    means = torch.tensor([[-5.0, -5.0], [5.0, 5.0]])
    x = torch.tensor([[-4.0, -6.0], [4.0, 4.0], [6.0, 5.0], [0.1, 0.2]])
    torch.testing.assert_close(mode_weights(x, means), torch.tensor([0.25, 0.75], dtype=DT))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        CauchyConfig(steps=0)
    with pytest.raises(ValueError, match="'bogus'"):
        CauchyConfig(residual="bogus")
    with pytest.raises(ValueError, match="'noisy'"):
        CauchyConfig(init="noisy")


SMALL = ["--hidden", "16", "--depth", "2", "--batch", "32", "--batch-ic", "32", "--eval-samples", "40",
         "--em-steps", "5", "--eval-points", "64", "--fp-points", "8", "--density-points", "0", "--density-grid", "0", "--no-baseline"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "gmm9"], "gmm9"),
        (["--dataset", "swissroll"], "swissroll"),
        (["--steps", "0"], "steps"),
        (["--steps", "-3"], "steps"),
        (["--sde", "sub"], "sub"),
        (["--residual", "approx"], "approx"),
        (["--init", "noisy"], "noisy"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["cauchy", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not out.exists()


def test_cli_resume_matches_an_uninterrupted_run(tmp_path):
    """A run stopped at step 2 and resumed to step 4 has the same parameters as one run to step 4
    (checkpointed optimiser and generator state; lr a function of the step and of --steps)."""
    run = CliRunner()
    a, b = tmp_path / "a", tmp_path / "b"
    r1 = run.invoke(main, ["cauchy", *SMALL, "--steps", "5", "--stop-after", "4", "--out", str(a)])
    assert r1.exit_code == 0, r1.output
    assert "stopped at step 4" in r1.output and not (a / "results.json").exists()
    r2 = run.invoke(main, ["cauchy", *SMALL, "--steps", "5", "--stop-after", "2", "--out", str(b)])
    assert r2.exit_code == 0, r2.output
    r3 = run.invoke(main, ["cauchy", *SMALL, "--steps", "5", "--out", str(b)])
    assert r3.exit_code == 2 and "--resume" in r3.output  # no silent overwrite
    r4 = run.invoke(main, ["cauchy", *SMALL, "--steps", "5", "--stop-after", "4", "--resume", "--out", str(b)])
    assert r4.exit_code == 0, r4.output
    sa = torch.load(a / "pinn" / "checkpoint.pt", weights_only=True)
    sb = torch.load(b / "pinn" / "checkpoint.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 4
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=0, atol=1e-6)
    r5 = run.invoke(main, ["cauchy", *SMALL, "--steps", "5", "--resume", "--out", str(b)])
    assert r5.exit_code == 0, r5.output
    assert "mean rel. score error" in r5.output
    assert (b / "results.json").is_file() and (b / "score_error.png").is_file()
    assert len((b / "pinn" / "metrics.jsonl").read_text().splitlines()) == 5
