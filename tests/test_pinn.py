"""Tests of the score-FPE Cauchy solver (scorefpe.pinn) and `scorefpe cauchy`."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from scorefpe.cli.main import main
from scorefpe.data.synthetic import get_dataset
from scorefpe.models.mlp import MLPConfig
from scorefpe.experiments.cauchy import (
    CauchyEvalConfig,
    ResumeMismatchError,
    baseline_config,
    build_model,
    run_cauchy,
    train_run,
)
from scorefpe.pinn import (
    CauchyConfig,
    PreconditionedScore,
    TrainState,
    cauchy_loss,
    data_scale,
    evals_per_step,
    local_scale,
    make_loss,
    mode_weights,
    sliced_wasserstein,
    train,
)
from scorefpe.sde import make_sde

DT = torch.float64
STEPS = 300  # solver steps of the gmm8 initial-condition test (2-3 s for both wrappers)


def _initial_score_sample(ds, sde, n, seed, t_min=1e-3):
    """x ~ q_{t_min} and the exact score there, float64."""
    gen = torch.Generator().manual_seed(seed)
    x0 = ds.sample(n, gen)
    t = torch.full((n,), t_min, dtype=DT)
    x, _ = sde.perturb(x0, t, gen)
    return x0, x, ds.score_fn(sde)(x, t)


def _setup(sde_name="ve", dataset="gmm2d", hidden=16, depth=2, **kw):
    ds = get_dataset(dataset)
    sde = make_sde(sde_name)
    cfg = CauchyConfig(dataset=dataset, sde=sde_name, batch=64, batch_ic=64, hidden=hidden, depth=depth, **kw)
    x0, _, s0 = _initial_score_sample(ds, sde, 4000, 5, cfg.t_min)
    sl = local_scale(s0, sde, cfg.t_min) if cfg.precond == "local" else None
    model = PreconditionedScore(MLPConfig(dim=ds.dim, hidden=hidden, depth=depth), sde, data_scale(x0),
                                sigma_local=sl, t_min=cfg.t_min, seed=0)
    return ds, sde, cfg, model


@pytest.mark.parametrize("sde_name, collocation", [("ve", "data"), ("vp", "data"), ("ve", "mixed")])
def test_exact_score_has_zero_residual_in_the_solver_loss(sde_name, collocation):
    """The closed-form GMM score solves the score FPE: the solver's own (weighted) residual term
    is round-off, and its initial-condition term exactly 0; a 1 % perturbation is not zero."""
    ds, sde, cfg, model = _setup(sde_name, collocation=collocation)
    truth = ds.truth
    true_fn = lambda x, t: truth.score(x, t, sde)  # noqa: E731
    terms = cauchy_loss(true_fn, model.out_scale, sde, ds.sample, true_fn, cfg, torch.Generator().manual_seed(1), DT)
    # Every term of w(t) eps is O(1) after the natural weighting (module docstring); float64
    # round-off of O(1) terms with O(10) cancelling pieces is < 1e-12, squared < 1e-24.
    assert float(terms["residual"].detach()) < 1e-20
    assert float(terms["initial"].detach()) == 0.0
    bad = lambda x, t: 1.01 * truth.score(x, t, sde)  # noqa: E731
    terms_bad = cauchy_loss(bad, model.out_scale, sde, ds.sample, true_fn, cfg, torch.Generator().manual_seed(1), DT)
    assert float(terms_bad["residual"].detach()) > 1e-8
    assert float(terms_bad["initial"].detach()) > 1e-6


def test_estimated_residual_of_exact_score_is_probe_variance_only():
    """For the exact score, eps = 0, so the estimated residual term is the Hutchinson variance
    (divided by K probes) plus the stencil's O(h_s h_d) bias squared: K = 64 probes must give
    about 1/64 of K = 1 (asserted: below 1/16, same collocation points and seeds)."""
    ds, sde, cfg, model = _setup("ve", residual="estimated")
    true_fn = lambda x, t: ds.truth.score(x, t, sde)  # noqa: E731
    r = {}
    for k in (1, 64):
        c = CauchyConfig(batch=64, batch_ic=8, residual="estimated", n_probes=k)
        r[k] = float(cauchy_loss(true_fn, model.out_scale, sde, ds.sample, true_fn, c,
                                 torch.Generator().manual_seed(2), DT)["residual"].detach())
    assert r[64] < r[1] / 16, r


@pytest.mark.parametrize(
    "precond, steps, lr, factor",
    [("global", 40, 1e-3, 0.2),  # measured: 7.3e6 -> 5.7e5
     ("local", 100, 1e-2, 0.5)],  # measured: 1.09 -> 0.39
)
def test_a_few_solver_steps_reduce_the_loss(precond, steps, lr, factor):
    """Natural weighting on gmm2d. global (first version, raw time): the untrained net's
    t-dependence near t_min makes the weighted residual ~1e6 and 40 Adam steps must remove most of
    it. local (the default): the loss starts at the initial-condition term ~1 (relative error of the
    Gaussian start) and 100 steps must at least halve it."""
    ds, sde, cfg, model = _setup("ve", steps=steps, lr=lr, weighting="natural", precond=precond)
    loss_fn = make_loss(model, sde, ds.sample, ds.score_fn(sde), cfg)

    def fixed_loss() -> float:  # the same draw before and after: a deterministic comparison
        with torch.enable_grad():
            return float(loss_fn(torch.Generator().manual_seed(99))["total"].detach())

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = train(model, loss_fn, opt, torch.Generator().manual_seed(0), cfg, TrainState())
    after = fixed_loss()
    assert state.step == steps and len(state.history) == steps
    assert after < factor * before, (before, after)


def _ic_term_after(dataset, precond, weighting, steps, hidden=64, depth=2):
    """The initial-condition term on one fixed draw, before and after ``steps`` solver steps (of a
    3000-step schedule: lr ~ 1e-2 throughout, as in the first steps of a real run)."""
    ds, sde, cfg, model = _setup("ve", dataset, hidden=hidden, depth=depth, steps=3000, precond=precond,
                                 weighting=weighting)
    loss_fn = make_loss(model, sde, ds.sample, ds.score_fn(sde), cfg)

    def ic() -> float:
        with torch.enable_grad():
            return float(loss_fn(torch.Generator().manual_seed(99))["initial"].detach())

    before = ic()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    train(model, loss_fn, opt, torch.Generator().manual_seed(0), cfg, TrainState(), stop_at=steps)
    return before, ic()


def test_local_preconditioning_learns_the_sharp_initial_condition_of_gmm8():
    """gmm8 (mode std 0.1): with the local wrapper and natural weighting, STEPS solver steps cut the
    initial-condition term (relative to the initial score's mean square, ~1 at the start) by > 3x
    (measured: 1.17 -> 0.22);
    the first version (global wrapper, unweighted residual: the runs that failed) keeps it > 0.8 of its start."""
    b_loc, a_loc = _ic_term_after("gmm8", "local", "natural", STEPS)
    b_glob, a_glob = _ic_term_after("gmm8", "global", "none", STEPS)
    assert a_loc < b_loc / 3, (b_loc, a_loc)
    assert a_glob > 0.8 * b_glob, (b_glob, a_glob)


def test_dsm_baseline_uses_the_same_number_of_evaluations():
    ds, sde, cfg, model = _setup("ve")
    n = evals_per_step(cfg, 2)
    assert n == 3 * 64 + 64  # (D + 1) B + B_ic for the exact residual in D = 2
    assert evals_per_step(CauchyConfig(batch=10, batch_ic=5, residual="estimated", n_probes=2), 2) == 55


@pytest.mark.parametrize("precond", ["local", "global"])
def test_preconditioned_model_starts_at_the_large_t_gaussian_score(precond):
    """With the net's output zeroed, s~ = -x / c(t)^2, the score of N(0, c^2 I), in both wrappers."""
    ds, sde, cfg, model = _setup("vp", precond=precond)
    with torch.no_grad():
        model.net.net.out.weight.zero_()
        model.net.net.out.bias.zero_()
    x = torch.randn(7, 2)
    t = torch.rand(7) * 0.9 + 0.05
    c2 = sde.mean_coeff(t) ** 2 * model.sigma_data**2 + sde.marginal_var(t)
    torch.testing.assert_close(model(x, t), -x / c2[:, None])


@pytest.mark.parametrize("dataset", ["gmm8", "gmm1d"])
def test_local_output_scale_is_the_initial_score_rms_and_bounds_it_later(dataset):
    """1 / b(t_min) is the RMS of the initial score per coordinate (exactly, on the sample it is
    computed from; within 5 standard errors on an independent one), and at later t the RMS score
    of q_t lies between 1 / c(t) (Cramer-Rao) and 1 / b(t) (Stam's inequality), 5 SE slack.
    The first version's output scale 1 / c is 7x (gmm8) and 34x (gmm1d) too small at t_min."""
    ds, sde = get_dataset(dataset), make_sde("ve")
    x0, _, s0 = _initial_score_sample(ds, sde, 20000, 0)
    model = PreconditionedScore(MLPConfig(dim=ds.dim, hidden=8, depth=1), sde, data_scale(x0),
                                sigma_local=local_scale(s0, sde, 1e-3), t_min=1e-3)
    tmin = torch.full((1,), 1e-3, dtype=DT)
    assert float(model.out_scale(tmin)) * float(s0.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-12)
    assert float(model.scale(tmin)) * float(s0.pow(2).mean().sqrt()) > 5  # why the fix was needed
    for seed, t in enumerate([1e-3, 0.1, 0.3, 0.5, 0.7, 1.0], start=1):
        gen = torch.Generator().manual_seed(seed)
        tt = torch.full((20000,), t, dtype=DT)
        x, _ = sde.perturb(ds.sample(20000, gen), tt, gen)
        sq = ds.score_fn(sde)(x, tt).pow(2).mean(-1)  # |s|^2 / D per point
        j, se = float(sq.mean()), float(sq.std() / math.sqrt(sq.numel()))
        b, c = float(model.out_scale(tt[:1])), float(model.scale(tt[:1]))
        assert j * b * b <= 1 + 5 * se * b * b, (t, j * b * b)  # Stam: J(t) <= 1 / b(t)^2
        assert j * c * c >= 1 - 5 * se * c * c, (t, j * c * c)  # Cramer-Rao: J(t) >= 1 / c(t)^2
        if t == 1e-3:
            assert abs(j * b * b - 1) <= 5 * se * b * b
    tau = model.net_time(torch.tensor([1e-3, 0.2, 0.5, 1.0], dtype=DT))
    assert float(tau[0]) == pytest.approx(0.0, abs=1e-12) and float(tau[-1]) == pytest.approx(1.0, abs=1e-12)
    assert bool((tau.diff() > 0).all())


def test_local_scale_rejects_bad_input():
    sde = make_sde("ve")
    with pytest.raises(ValueError, match="shape"):
        local_scale(torch.ones(5), sde, 1e-3)
    with pytest.raises(ValueError, match="> 0"):
        local_scale(torch.zeros(5, 2), sde, 1e-3)
    with pytest.raises(ValueError, match="sigma_local"):
        PreconditionedScore(MLPConfig(dim=2), sde, 1.0, sigma_local=0.0)


def test_sliced_wasserstein_of_a_shift():
    """SW2 between a sample and its shift by d is sqrt(E (theta.d)^2) = |d| / sqrt(D) for theta
    uniform on the sphere; with 4000 projections the MC relative error is ~ sqrt(2/4000) ~ 2 %."""
    a = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    d = torch.tensor([3.0, 4.0], dtype=DT)
    sw = sliced_wasserstein(a, a + d, n_proj=4000, generator=torch.Generator().manual_seed(1))
    assert abs(sw - 5 / math.sqrt(2)) < 0.1 * 5 / math.sqrt(2)
    assert sliced_wasserstein(a, a.flip(0), generator=torch.Generator().manual_seed(2)) < 1e-12  # same empirical measure
    with pytest.raises(ValueError):
        sliced_wasserstein(a, a[:10])


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_log_ratio_error_of_a_mixture_with_other_weights_is_the_log_weight_error(sde_name):
    """gmm2d's score against that of the same mixture with weights 0.3 / 0.7: while the modes
    are apart, log q~ - log q at a(t) mu_2 minus at a(t) mu_1 is log(0.7 / 0.3) - log(0.8 / 0.2)
    = -0.539 up to the other component's share at the means, ~exp(-50 / (1 + v(t)/a^2)) (< 1e-9
    here), and the trapezoid error of the jump (step 1 / 8000 of the segment, jump width
    1 / 14 of length 14: ~1e-6). A constant score error c gives c . a(t) (mu_2 - mu_1) exactly
    (float32 inputs: 1e-5 relative)."""
    from scorefpe.data.synthetic import _gmm
    from scorefpe.pinn import log_ratio_error

    ds, sde = get_dataset("gmm2d"), make_sde(sde_name)
    eye = [[1.0, 0.0], [0.0, 1.0]]
    other = _gmm([0.3, 0.7], [[-5.0, -5.0], [5.0, 5.0]], [eye, eye]).score_fn(sde)
    true = ds.score_fn(sde)
    ts = torch.tensor([1e-3, 0.05, 0.2], dtype=torch.float64)
    err = log_ratio_error(other, true, sde, ds.truth.means, ts, dtype=torch.float64)
    expected = math.log(0.7 / 0.3) - math.log(0.8 / 0.2)
    assert err.shape == (3, 1)
    torch.testing.assert_close(err[:, 0], torch.full((3,), expected, dtype=torch.float64), rtol=0, atol=1e-5)
    c = torch.tensor([0.3, -0.1])
    shifted = log_ratio_error(lambda x, t: true(x.double(), t.double()).float() + c, true, sde, ds.truth.means, ts)
    a = sde.mean_coeff(ts)
    torch.testing.assert_close(shifted[:, 0], a * float(c.double() @ (ds.truth.means[1] - ds.truth.means[0])),
                               rtol=1e-4, atol=1e-5)


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
    with pytest.raises(ValueError, match="'loose'"):
        CauchyConfig(precond="loose")
    with pytest.raises(ValueError, match="exact initial score"):
        CauchyConfig(init="dsm", precond="local")
    for bad in (0, 0.0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="uniform_fraction"):
            CauchyConfig(collocation="mixed", uniform_fraction=bad)
    with pytest.raises(ValueError, match="'log'"):
        CauchyConfig(t_sampling="log")


@pytest.mark.parametrize("how", ["uniform", "tau", "mixed"])
def test_collocation_times_are_uniform_in_t_or_in_the_network_time_tau(how):
    """t_sampling=tau draws t with tau(t) ~ U[0, 1] (tau the local wrapper's network time), uniform
    draws t ~ U[t_min, T], mixed does the first half of the batch by t and the second by tau.
    Checked by the mean and variance of the uniform variable (t - t_min) / (T - t_min) or tau(t):
    1/2 and 1/12, standard errors 0.289 / sqrt(n) and 0.075 / sqrt(n); tolerance 5 standard
    errors. The other variable is then not uniform (gmm2d VE: tau(t) ~ 0 up to t ~ 0.3)."""
    from scorefpe.pinn.solver import _sample_t

    ds, sde, cfg, model = _setup(t_sampling=how)
    n = 20000
    t = _sample_t(n, cfg, sde, model.out_scale, torch.Generator().manual_seed(4), DT)
    assert t.shape == (n,) and bool(((t >= cfg.t_min) & (t <= sde.T)).all())
    u_t = (t - cfg.t_min) / (sde.T - cfg.t_min)
    u_tau = model.net_time(t)
    parts = {"uniform": [(u_t, True), (u_tau, False)], "tau": [(u_tau, True), (u_t, False)],
             "mixed": [(u_t[: n // 2], True), (u_tau[n // 2:], True), (u_t[n // 2:], False)]}[how]
    for u, uniform in parts:
        m = len(u)
        close = (abs(float(u.mean()) - 0.5) < 5 * 0.289 / math.sqrt(m)
                 and abs(float(u.var()) - 1 / 12) < 5 * 0.075 / math.sqrt(m))
        assert close is uniform, (how, float(u.mean()), float(u.var()))


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75, 1.0])
def test_mixed_collocation_draws_the_uniform_fraction_on_the_widened_box(fraction):
    """cauchy_loss's mixed draw keeps floor(B (1 - f)) rows of the perturbed data and replaces the
    other ceil(f B) by U(a(t) [min x0, max x0] +- 3 std(t)). Checked on the rows: the kept ones are
    untouched, the new ones lie in their box, and their position inside it, (x - lo) / (hi - lo),
    has mean 1/2 and variance 1/12 (n = f B D values: standard errors 0.29 / sqrt(n) and
    0.075 / sqrt(n); tolerance 5 standard errors)."""
    from scorefpe.pinn.solver import _mix_uniform

    sde = make_sde("ve")
    gen = torch.Generator().manual_seed(3)
    b, d = 4000, 2
    x0 = get_dataset("gmm2d").sample(b, gen)
    t = 0.05 + 0.95 * torch.rand(b, generator=gen, dtype=DT)
    x, _ = sde.perturb(x0, t, gen)
    y = _mix_uniform(x, x0, t, sde, gen, fraction)
    keep = math.floor(b * (1 - fraction))
    assert torch.equal(y[:keep], x[:keep])
    a = sde.mean_coeff(t[keep:])[:, None]
    sd = sde.marginal_std(t[keep:])[:, None]
    lo, hi = a * x0.min(0).values - 3 * sd, a * x0.max(0).values + 3 * sd
    u = (y[keep:] - lo) / (hi - lo)
    assert bool(((u >= 0) & (u <= 1)).all())
    n = u.numel()
    assert n == (b - keep) * d
    assert abs(float(u.mean()) - 0.5) < 5 * 0.289 / math.sqrt(n)
    assert abs(float(u.var()) - 1 / 12) < 5 * 0.075 / math.sqrt(n)
    assert int((y != x).any(-1).sum()) == b - keep


SMALL = ["--hidden", "16", "--depth", "2", "--batch-size", "32", "--ic-batch-size", "32", "--eval-samples", "40",
         "--sampler-steps", "5", "--eval-points", "64", "--fp-points", "8", "--density-points", "0", "--density-grid", "0", "--no-baseline"]


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
        (["--precond", "loose"], "loose"),
        (["--init", "dsm", "--precond", "local"], "exact initial score"),
        (["--collocation", "mixed", "--uniform-fraction", "0"], "--uniform-fraction"),
        (["--collocation", "mixed", "--uniform-fraction", "1.2"], "--uniform-fraction"),
        (["--collocation", "data", "--uniform-fraction", "0.25"], "--collocation mixed"),
        (["--t-sampling", "log"], "log"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["cauchy", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not out.exists()


def test_cli_passes_the_uniform_fraction_to_the_saved_config(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["cauchy", *SMALL, "--steps", "2", "--stop-after", "1", "--collocation", "mixed",
                                    "--uniform-fraction", "0.75", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "pinn" / "config.json").read_text())["uniform_fraction"] == 0.75


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
        assert torch.equal(sa["model"][k], sb["model"][k]), k  # bit for bit, as a kill -9 needs
    r5 = run.invoke(main, ["cauchy", *SMALL, "--steps", "5", "--resume", "--out", str(b)])
    assert r5.exit_code == 0, r5.output
    assert "mean rel. score error" in r5.output
    assert (b / "results.json").is_file() and (b / "score_error.png").is_file()
    assert len((b / "pinn" / "metrics.jsonl").read_text().splitlines()) == 5


def test_build_model_scales_are_the_data_and_initial_score_moments():
    """sigma_data^2 = E|x0|^2 / D; for gmm2d in closed form sum_k w_k (|mu_k|^2 + tr Sigma_k) / D
    = 26, met within 5 Monte-Carlo standard errors of the 20,000-sample mean. The local scale
    equals `local_scale` on an independent 20,000-sample estimate within 5 standard errors of J_0
    (propagated: d sigma_local / sigma_local ~ 1/2 dJ_0 / J_0 / (1 - v J_0))."""
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    cfg = CauchyConfig(hidden=8, depth=1, seed=3)
    model = build_model(cfg, ds, sde)
    truth = ds.truth
    exact = float((truth.weights * (truth.means.pow(2).sum(1) + truth.covariances.diagonal(dim1=1, dim2=2).sum(1))).sum()) / 2
    g = torch.Generator().manual_seed(99)
    x0 = ds.sample(20000, g)
    se_ms = float((x0.pow(2).mean(1)).std()) / math.sqrt(20000)
    assert abs(model.sigma_data**2 - exact) < 5 * se_ms
    assert model.local
    t = torch.full((20000,), cfg.t_min, dtype=DT)
    x, _ = sde.perturb(x0, t, g)
    s0 = ds.score_fn(sde)(x, t)
    sq = s0.pow(2).mean(1)
    j0, se_j0 = float(sq.mean()), float(sq.std()) / math.sqrt(20000)
    v0 = float(sde.marginal_var(torch.tensor([cfg.t_min], dtype=DT)))
    rel = 0.5 * (se_j0 / j0) / (1 - v0 * j0)
    assert abs(model.sigma_local / local_scale(s0, sde, cfg.t_min) - 1) < 5 * rel
    glob = build_model(replace(cfg, precond="global"), ds, sde)
    assert not glob.local and glob.sigma_local == glob.sigma_data == model.sigma_data
    for k, v in glob.net.state_dict().items():  # same seed, same initial weights
        torch.testing.assert_close(v, model.net.state_dict()[k], rtol=0, atol=0)


def test_baseline_config_spends_the_pinn_evaluations_on_dsm():
    cfg = CauchyConfig(batch=10, batch_ic=5)
    b = baseline_config(cfg, 2)
    assert (b.objective, b.init, b.dsm_batch) == ("dsm", "exact", 3 * 10 + 5)
    assert replace(b, objective="pinn", dsm_batch=None) == cfg


TINY = dict(dataset="gmm2d", sde="ve", steps=6, batch=32, batch_ic=32, hidden=16, depth=2)


def test_train_run_writes_the_run_and_resume_equals_an_uninterrupted_run(tmp_path):
    """Stopped at step 3 and resumed to 6, the parameters and loss history equal those of one
    run to step 6 (same float32 operations in the same order: agreement to round-off);
    config.json, metrics.jsonl (one row per step) and checkpoint.pt are written."""
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    cfg = CauchyConfig(**TINY)
    full = train_run(cfg, ds, sde, tmp_path / "a", checkpoint_every=100)
    assert full.steps == 6 and full.steps_per_s > 0 and full.final == full.final | {"step": 6}
    part = train_run(cfg, ds, sde, tmp_path / "b", stop_after=3)
    assert part.steps == 3
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3
    rest = train_run(cfg, ds, sde, tmp_path / "b", resume=True)
    assert rest.steps == 6 and rest.train_seconds >= part.train_seconds
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(rest.model.state_dict()[k], v, rtol=0, atol=1e-6)
    rows = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r, q in zip(rows, ref):
        assert r == pytest.approx(q, rel=1e-5, abs=1e-7)
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == cfg.to_dict()
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_train_run_resume_rejects_a_changed_config_and_writes_nothing(tmp_path):
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    cfg = CauchyConfig(**TINY)
    train_run(cfg, ds, sde, tmp_path, stop_after=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ResumeMismatchError, match="lr"):
        train_run(replace(cfg, lr=0.5), ds, sde, tmp_path, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # --steps may grow: the schedule is a function of the step and cfg.steps
    assert train_run(replace(cfg, steps=2), ds, sde, tmp_path, resume=True).steps == 2


def test_train_run_resumes_a_checkpoint_written_before_later_options(tmp_path):
    """A checkpoint without the keys precond / uniform_fraction / t_sampling (runs from before
    those options) resumes with the values that reproduce it, and is refused with others."""
    from scorefpe.training.checkpoint import save_checkpoint

    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    cfg = CauchyConfig(**TINY, precond="global")
    train_run(cfg, ds, sde, tmp_path, stop_after=1)
    ckpt = tmp_path / "checkpoint.pt"
    saved = torch.load(ckpt, weights_only=False)
    for key in ("precond", "uniform_fraction", "t_sampling"):
        del saved["config"][key]
    save_checkpoint(ckpt, saved)
    assert train_run(cfg, ds, sde, tmp_path, resume=True).steps == TINY["steps"]
    with pytest.raises(ResumeMismatchError, match="precond"):
        train_run(replace(cfg, precond="local"), ds, sde, tmp_path, resume=True)


def test_run_cauchy_writes_results_only_when_every_run_finished(tmp_path):
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    cfg = CauchyConfig(**TINY)
    ev = CauchyEvalConfig(n_samples=40, em_steps=5, n_points=64, n_fp_points=8, n_density=0, density_grid=0)
    seen = []
    res = run_cauchy(cfg, ds, sde, tmp_path, eval_cfg=ev, stop_after=2,
                     on_run=lambda name, run: seen.append((name, run.steps, run.eval is None)))
    assert seen == [("pinn", 2, True), ("dsm", 2, True)]
    assert res.results_path is None and res.figures == [] and not (tmp_path / "results.json").exists()
    res = run_cauchy(cfg, ds, sde, tmp_path, eval_cfg=ev, resume=True)
    assert set(res.finished) == {"pinn", "dsm"} and res.evals_per_step == 3 * 32 + 32
    assert [p.name for p in res.figures] == ["score_error.png", "samples.png"]
    assert all(p.is_file() for p in res.figures)
    out = json.loads(res.results_path.read_text())
    assert out["config"] == cfg.to_dict() and out["evals_per_step"] == 128
    assert out["runs"]["dsm"]["steps"] == 6
    assert out["runs"]["pinn"]["eval"]["mean_rel_err"] == pytest.approx(res.runs["pinn"].eval.mean_rel_err)
    assert sorted(out["runs"]["pinn"]) == ["eval", "eval_seconds", "final", "steps", "steps_per_s", "train_seconds"]


def test_cli_resume_with_other_options_exits_2(tmp_path):
    run = CliRunner()
    r1 = run.invoke(main, ["cauchy", *SMALL, "--steps", "3", "--stop-after", "1", "--out", str(tmp_path)])
    assert r1.exit_code == 0, r1.output
    r2 = run.invoke(main, ["cauchy", *SMALL, "--steps", "3", "--lr", "0.5", "--resume", "--out", str(tmp_path)])
    assert r2.exit_code == 2 and "--resume" in r2.output and "'lr'" in r2.output, r2.output


def test_cli_resume_from_a_corrupt_checkpoint_exits_2(tmp_path):
    """A truncated checkpoint.pt on --resume is bad input (exit 2 naming the file), not a crash."""
    out = tmp_path / "run"
    args = ["cauchy", "--dataset", "gmm2d", "--sde", "ve", "--steps", "2", "--no-baseline",
            "--density-grid", "0", "--out", str(out)]
    from click.testing import CliRunner

    from scorefpe.cli.main import main

    first = CliRunner().invoke(main, args + ["--stop-after", "1"])
    assert first.exit_code == 0, first.output
    ckpt = next(out.rglob("checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    res = CliRunner().invoke(main, args + ["--resume"])
    assert res.exit_code == 2, res.output
    assert "checkpoint" in res.output and str(ckpt.name) in res.output
