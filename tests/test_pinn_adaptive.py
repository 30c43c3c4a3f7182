"""Tests of residual-based adaptive collocation (`ResidualPool`, `rad_probabilities`,
`CauchyConfig.rad_every`) and gradient-norm balancing of the initial-condition weight
(`ICBalancer`, `CauchyConfig.balance_every`) of the Cauchy solver (issue 15). Both off by
default, with the losses of before."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import scorefpe.pinn.solver as solver
from scorefpe.cli.main import main
from scorefpe.data.synthetic import get_dataset
from scorefpe.experiments.cauchy import build_model, train_run
from scorefpe.pinn import CauchyConfig, ICBalancer, ResidualPool, TrainState, cauchy_loss, rad_probabilities, train
from scorefpe.sde import make_sde

TINY = dict(dataset="gmm2d", sde="ve", steps=6, batch=32, batch_ic=32, hidden=16, depth=2,
            collocation="mixed")


# ---------------------------------------------------------------- RAD probabilities and sampling


def test_rad_probabilities_closed_form():
    """r = (0, 1, 3), k = 2, c = 0.5: r^k = (0, 1, 9), mean 10/3, p prop. to (0.5, 0.8, 3.2)."""
    p = rad_probabilities(torch.tensor([0.0, 1.0, 3.0]), 2.0, 0.5)
    torch.testing.assert_close(p, torch.tensor([0.5, 0.8, 3.2], dtype=torch.float64) / 4.5, rtol=1e-15, atol=0)
    flat = torch.full((4,), 0.25, dtype=torch.float64)
    torch.testing.assert_close(rad_probabilities(torch.tensor([1.0, 2.0, 5.0, 0.0]), 0.0, 1.0), flat)  # k = 0
    torch.testing.assert_close(rad_probabilities(torch.zeros(4), 1.0, 0.0), flat)  # nothing to rank by


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.floats(0.0, 3.0), c=st.floats(0.0, 2.0))
def test_pool_draws_follow_the_rad_density(seed, k, c):
    """Pool x ~ U[0, 1] (N = 50000), residual r = x^2: the batch (n = 4000) is distributed with
    density (2k + 1) x^(2k) + c, normalised by 1 + c, whose mean is
    ((2k + 1) / (2k + 2) + c / 2) / (1 + c). The batch mean must lie within 5 standard errors:
    the draw's (std / sqrt(n)) and the pool's (the self-normalised importance estimate over N
    uniform points, sqrt(sum_j p_j^2 (x_j - mu)^2))."""
    g = torch.Generator().manual_seed(seed)
    n_pool, n = 50_000, 4000
    x = torch.rand(n_pool, 1, generator=g, dtype=torch.float64)
    pool = ResidualPool(every=1, size=n_pool, k=k, c=c)
    xb, tb = pool.draw(n, lambda: (x, torch.zeros(n_pool), x[:, 0] ** 2), g)
    assert xb.shape == (n, 1) and tb.shape == (n,)
    mu = ((2 * k + 1) / (2 * k + 2) + c / 2) / (1 + c)
    var = ((2 * k + 1) / (2 * k + 3) + c / 3) / (1 + c) - mu**2
    se_pool = float((pool.prob.pow(2) * (x[:, 0] - mu).pow(2)).sum().sqrt())
    se = math.sqrt(var / n + se_pool**2)
    assert abs(float(xb.mean()) - mu) < 5 * se, (float(xb.mean()), mu, se)


def test_pool_draws_follow_the_rad_density_bin_by_bin():
    """k = 1, c = 0.5, r = x^2 on a pool x ~ U[0, 1]: the fraction of n = 40000 draws in each of
    10 equal bins matches int_bin (3 x^2 + 0.5) dx / 1.5 within 5 binomial standard errors
    (the pool's own error, 200000 points, is ~1/20 of the draw's)."""
    g = torch.Generator().manual_seed(7)
    n_pool, n = 200_000, 40_000
    x = torch.rand(n_pool, 1, generator=g, dtype=torch.float64)
    pool = ResidualPool(every=1, size=n_pool, k=1.0, c=0.5)
    xb, _ = pool.draw(n, lambda: (x, torch.zeros(n_pool), x[:, 0] ** 2), g)
    counts = torch.histc(xb[:, 0], bins=10, min=0.0, max=1.0) / n
    edges = torch.linspace(0, 1, 11, dtype=torch.float64)
    p = ((edges[1:] ** 3 - edges[:-1] ** 3) + 0.5 * (edges[1:] - edges[:-1])) / 1.5
    se = (p * (1 - p) / n).sqrt()
    assert bool(((counts - p).abs() < 5 * se).all()), (counts, p)
    # and it is not the pool's own (uniform) law: the last bin has 6.3x the first's mass
    assert float(counts[-1]) > 5 * float(counts[0])


def test_pool_is_refreshed_every_n_draws():
    calls = []

    def refresh():
        calls.append(len(calls))
        v = torch.full((5, 1), float(len(calls)))
        return v, torch.zeros(5), torch.ones(5)

    pool = ResidualPool(every=3, size=5, k=1.0, c=1.0)
    g = torch.Generator().manual_seed(0)
    seen = [float(pool.draw(2, refresh, g)[0][0, 0]) for _ in range(7)]
    assert seen == [1, 1, 1, 2, 2, 2, 3] and len(calls) == 3


# ---------------------------------------------------------------- the loss with RAD / off


def _model(cfg):
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    return ds, sde, build_model(cfg, ds, sde, n_scale=2000)


def test_loss_with_both_options_off_is_the_loss_of_before_bit_for_bit():
    """Defaults (rad_every 0, balance_every 0): residual, initial and total equal, bit for bit,
    the loss recomputed here in the order of the code before the options (x0, t, perturb,
    mix, residual with the same generator; then the initial-condition draw), so no extra
    random draw or operation was introduced."""
    cfg = CauchyConfig(**TINY, ic_weight=2.0)
    ds, sde, model = _model(cfg)
    terms = cauchy_loss(model, model.out_scale, sde, ds.sample, ds.score_fn(sde), cfg,
                        torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x0 = ds.sample(cfg.batch, g).float()
    t = solver._uniform_t(cfg.batch, cfg.t_min, sde.T, g, torch.float32)
    x, _ = sde.perturb(x0, t, g)
    x = solver._mix_uniform(x, x0, t, sde, g, cfg.uniform_fraction)
    eps = solver.fp_residual(model, sde, x, t, method="exact", n_probes=1, generator=g, t_min=cfg.t_min,
                             create_graph=True)
    w = model.out_scale(t) ** 3 / sde.diffusion(t) ** 2
    residual = (w[:, None] ** 2 * eps.pow(2)).sum(-1).mean() / 2
    x0i = ds.sample(cfg.batch_ic, g).float()
    ti = torch.full((cfg.batch_ic,), cfg.t_min)
    xi, _ = sde.perturb(x0i, ti, g)
    xi = solver._mix_uniform(xi, x0i, ti, sde, g, cfg.uniform_fraction)
    target = ds.score_fn(sde)(xi, ti).float()
    initial = (model.out_scale(ti)[:, None] ** 2 * (model(xi, ti) - target).pow(2)).sum(-1).mean() / 2
    assert set(terms) == {"residual", "initial", "total"}
    assert torch.equal(terms["residual"], residual)
    assert torch.equal(terms["initial"], initial)
    assert torch.equal(terms["total"], residual + 2.0 * initial)


def test_adaptive_loss_trains_on_pool_points_ranked_by_the_models_residual(monkeypatch):
    """With rad_every > 0 the first residual evaluation is the pool's (rad_pool points, no
    graph) and the batch's points are rows of that pool; the pool's probabilities are
    rad_probabilities of w^2 ||eps||^2 / D of the model at those points."""
    cfg = CauchyConfig(**TINY, rad_every=5, rad_pool=300, rad_k=1.0, rad_c=0.25)
    ds, sde, model = _model(cfg)
    seen = []
    real = solver.fp_residual

    def spy(score_fn, sde_, x, t, **kw):
        eps = real(score_fn, sde_, x, t, **kw)
        seen.append((x, t, eps, kw["create_graph"]))
        return eps

    monkeypatch.setattr(solver, "fp_residual", spy)
    pool = ResidualPool.from_config(cfg)
    cauchy_loss(model, model.out_scale, sde, ds.sample, ds.score_fn(sde), cfg, torch.Generator().manual_seed(1),
                pool=pool)
    (xp, tp, ep, gp), (xb, tb, _, gb) = seen
    assert xp.shape == (300, 2) and not gp and gb and xb.shape == (cfg.batch, 2)
    match = (xb[:, None, :] == xp[None, :, :]).all(-1) & (tb[:, None] == tp[None, :])
    assert bool(match.any(1).all())
    w = model.out_scale(tp) ** 3 / sde.diffusion(tp) ** 2
    r = (w[:, None] ** 2 * ep.pow(2)).sum(-1) / 2
    torch.testing.assert_close(pool.prob, rad_probabilities(r, 1.0, 0.25))
    assert pool.draws == 1


def test_adaptive_initial_condition_draws_its_points_by_their_ic_error():
    """rad_ic: the pool holds rad_pool points of the IC law with their exact target scores, its
    probabilities are rad_probabilities of b(t_min)^2 ||s~ - s||^2 / D there, and the IC term
    is the mean of that error over the drawn rows. With batch_ic = 20000 draws from a pool of
    400, the term must equal sum_j p_j r_j within 5 standard errors of the multinomial mean
    (sqrt(Var_p(r) / n)); with rad_ic off it would be the plain pool mean, which lies far
    outside (checked: the two differ by more than 20 of those errors for k = 1, c = 0.1)."""
    cfg = CauchyConfig(**{**TINY, "batch_ic": 20_000}, rad_every=5, rad_pool=400, rad_k=1.0, rad_c=0.1,
                       rad_ic=True)
    ds, sde, model = _model(cfg)
    pool, ic_pool = ResidualPool.from_config(cfg), ResidualPool.from_config(cfg)
    terms = cauchy_loss(model, model.out_scale, sde, ds.sample, ds.score_fn(sde), cfg,
                        torch.Generator().manual_seed(3), pool=pool, ic_pool=ic_pool)
    x, target = ic_pool.x, ic_pool.t
    assert x.shape == (400, 2) and target.shape == (400, 2) and ic_pool.draws == 1
    t0 = torch.full((400,), cfg.t_min)
    torch.testing.assert_close(target, ds.score_fn(sde)(x, t0).float())
    with torch.no_grad():
        r = (model.out_scale(t0)[:, None] ** 2 * (model(x, t0) - target).pow(2)).sum(-1).double() / 2
    torch.testing.assert_close(ic_pool.prob, rad_probabilities(r, 1.0, 0.1))
    mean_p = float((ic_pool.prob * r).sum())
    se = math.sqrt(float((ic_pool.prob * (r - mean_p) ** 2).sum()) / cfg.batch_ic)
    assert abs(float(terms["initial"]) - mean_p) < 5 * se, (float(terms["initial"]), mean_p, se)
    assert abs(float(r.mean()) - mean_p) > 20 * se


def test_initial_condition_pool_needs_the_collocation_pool_and_the_exact_score(tmp_path):
    with pytest.raises(ValueError, match="rad_every"):
        CauchyConfig(rad_ic=True)
    with pytest.raises(ValueError, match="init"):
        CauchyConfig(rad_ic=True, rad_every=5, init="dsm", precond="global")
    with pytest.raises(ValueError, match="rad_ic"):
        CauchyConfig(rad_ic=1)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["cauchy", "--rad-ic", "--out", str(out)])
    assert res.exit_code == 2 and "rad_every" in res.output, res.output
    assert not out.exists()


@pytest.mark.parametrize("extra", [{}, dict(rad_ic=True, curriculum=0.5, lr_schedule="exponential")])
def test_adaptive_run_resumes_exactly(tmp_path, extra):
    """rad_every 2 (a refresh at steps 0, 2, 4) and balance_every 2, with and without the IC
    pool, the curriculum (horizon still growing at the stop) and another lr schedule: stopped at
    step 3 and resumed to 6 it has the parameters and loss history of the uninterrupted run
    (float32 round-off)."""
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    cfg = CauchyConfig(**TINY, rad_every=2, rad_pool=64, balance_every=2, **extra)
    full = train_run(cfg, ds, sde, tmp_path / "full")
    train_run(cfg, ds, sde, tmp_path / "part", stop_after=3)
    rest = train_run(cfg, ds, sde, tmp_path / "part", resume=True)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(rest.model.state_dict()[k], v, rtol=0, atol=1e-6)
    read = lambda p: [json.loads(r) for r in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read(tmp_path / "full"), read(tmp_path / "part")
    assert [r["ic_weight"] for r in a] == pytest.approx([r["ic_weight"] for r in b], rel=1e-6)
    assert a[-1]["ic_weight"] != 1.0


# ---------------------------------------------------------------- IC balancing


def _linear_terms(theta, a, b):
    return {"residual": (a * theta).sum(), "initial": (b * theta).sum()}


def test_balancer_sets_the_weight_to_a_running_average_of_the_gradient_norm_ratio():
    """R = a.theta, I = b.theta: ||grad R|| / ||grad I|| = |a| / |b| = rho. Updates at steps 0, 2,
    4 (every 2) give lambda_n = rho + (lambda_0 - rho) d^n; steps 1, 3 keep it; total = R + lambda I."""
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)  # |a| = 5
    b = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)  # |b| = 0.5, rho = 10
    bal = ICBalancer(weight=2.0, every=2, decay=0.7)
    lams = []
    for step in range(5):
        terms = bal.weigh(_linear_terms(theta, a, b), [theta], step)
        lams.append(bal.weight)
        assert float(terms["ic_weight"]) == bal.weight
        torch.testing.assert_close(terms["total"], (a * theta).sum() + bal.weight * (b * theta).sum())
    rho = 10.0
    expect = [rho + (2.0 - rho) * 0.7 ** n for n in (1, 1, 2, 2, 3)]
    assert lams == pytest.approx(expect, rel=1e-12)


def test_train_with_a_balancer_steps_along_the_balanced_gradient():
    """One SGD step (lr 0.1, no clipping in effect) with a balancer (decay 0, so lambda = rho at
    once) moves theta by -0.1 (a + rho b): the balanced total is what is differentiated."""
    model = nn.Module()
    model.theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    theta = model.theta
    a = torch.tensor([0.3, 0.0, 0.4], dtype=torch.float64)
    b = torch.tensor([0.0, 0.05, 0.0], dtype=torch.float64)
    cfg = CauchyConfig(steps=1, lr=0.1, lr_final=0.1, grad_clip=1e6)
    start = theta.detach().clone()
    train(model, lambda gen: {**_linear_terms(theta, a, b), "total": torch.zeros(())},
          torch.optim.SGD([theta], lr=0.1), torch.Generator(), cfg, TrainState(),
          balancer=ICBalancer(1.0, 1, 0.0))
    torch.testing.assert_close(theta.detach(), start - 0.1 * (a + 10.0 * b), rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------- configuration and CLI


def test_config_and_cli_reject_bad_adaptive_options(tmp_path):
    for bad in (dict(rad_every=-1), dict(rad_pool=0), dict(rad_k=-1.0), dict(rad_c=math.nan),
                dict(balance_every=-2), dict(balance_decay=1.0), dict(rad_every=True)):
        with pytest.raises(ValueError):
            CauchyConfig(**bad)
    for args, needle in ((["--rad-every", "-1"], "--rad-every"), (["--rad-pool", "0"], "--rad-pool"),
                         (["--rad-k", "nan"], "--rad-k"), (["--rad-c", "-1"], "--rad-c"),
                         (["--balance-every", "-1"], "--balance-every"), (["--balance-decay", "1"], "--balance-decay")):
        out = tmp_path / "run"
        res = CliRunner().invoke(main, ["cauchy", *args, "--out", str(out)])
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not out.exists()


def test_cli_passes_the_adaptive_options_to_the_saved_config(tmp_path):
    out = tmp_path / "run"
    small = ["--hidden", "16", "--depth", "2", "--batch-size", "32", "--ic-batch-size", "32", "--no-baseline"]
    res = CliRunner().invoke(main, ["cauchy", *small, "--steps", "2", "--stop-after", "1", "--rad-every", "7",
                                    "--rad-pool", "100", "--rad-k", "2", "--rad-c", "0.5", "--balance-every", "3",
                                    "--balance-decay", "0.5", "--rad-ic", "--curriculum", "0.25",
                                    "--lr-schedule", "constant", "--time-method", "central", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "pinn" / "config.json").read_text())
    assert [saved[k] for k in ("rad_every", "rad_pool", "rad_k", "rad_c", "balance_every", "balance_decay",
                               "rad_ic", "curriculum", "lr_schedule", "time_method")] == \
        [7, 100, 2.0, 0.5, 3, 0.5, True, 0.25, "constant", "central"]


# ---------------------------------------------------------------- curriculum and lr schedules


def test_curriculum_shrinks_the_times_of_the_same_draws_by_the_horizon(monkeypatch):
    """Curriculum(0.5, 8): h_k = min(1, (k + 1) / 4) = 0.25, 0.5, 0.75, 1, 1. The times of
    draw k are t_min + h_k (t - t_min) of the times the same generator gives without it
    (float32 round-off of the map), so the law of t_sampling is kept inside the horizon."""
    cfg = CauchyConfig(**{**TINY, "steps": 8}, curriculum=0.5)
    ds, sde, model = _model(cfg)
    seen = []
    real = solver.fp_residual
    monkeypatch.setattr(solver, "fp_residual", lambda f, s_, x, t, **kw: (seen.append(t), real(f, s_, x, t, **kw))[1])
    cur = solver.Curriculum.from_config(cfg)
    hs = []
    for k in range(5):
        before = cur.draws
        cauchy_loss(model, model.out_scale, sde, ds.sample, ds.score_fn(sde), cfg,
                    torch.Generator().manual_seed(k), horizon=(h := cur.next()))
        hs.append(h)
        assert cur.draws == before + 1
        cauchy_loss(model, model.out_scale, sde, ds.sample, ds.score_fn(sde), cfg, torch.Generator().manual_seed(k))
        t_h, t_1 = seen[-2], seen[-1]
        torch.testing.assert_close(t_h, cfg.t_min + h * (t_1 - cfg.t_min), rtol=1e-6, atol=1e-7)
        assert float(t_h.max()) <= cfg.t_min + h * (1 - cfg.t_min) + 1e-6
    assert hs == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert solver.Curriculum.from_config(CauchyConfig()) is None


def test_lr_schedules_closed_form():
    """lr 1e-2 to lr_final 1e-4 over 100 steps: cosine 5.05e-3 half-way; exponential the
    geometric mean 1e-3 half-way and 1e-2 * 0.01^0.25 at a quarter; constant 1e-2 throughout;
    all start at lr and the decaying ones end at lr_final."""
    for how, half in (("cosine", 5.05e-3), ("exponential", 1e-3), ("constant", 1e-2)):
        cfg = CauchyConfig(steps=100, lr=1e-2, lr_final=1e-4, lr_schedule=how)
        assert solver.lr_at(0, cfg) == pytest.approx(1e-2, rel=1e-12)
        assert solver.lr_at(50, cfg) == pytest.approx(half, rel=1e-12)
        assert solver.lr_at(100, cfg) == pytest.approx(1e-2 if how == "constant" else 1e-4, rel=1e-12)
    cfg = CauchyConfig(steps=100, lr=1e-2, lr_final=1e-4, lr_schedule="exponential")
    assert solver.lr_at(25, cfg) == pytest.approx(1e-2 * 0.01**0.25, rel=1e-12)


@pytest.mark.parametrize("time_method", [None, "exact", "nonuniform"])
def test_the_residual_takes_d_t_by_the_configured_method(monkeypatch, time_method):
    """cfg.time_method reaches fp_residual (None: the residual method's own choice)."""
    cfg = CauchyConfig(**TINY, residual="estimated", time_method=time_method)
    ds, sde, model = _model(cfg)
    seen = []
    real = solver.fp_residual

    def spy(score_fn, sde_, x, t, **kw):
        seen.append(kw["time_method"])
        return real(score_fn, sde_, x, t, **kw)

    monkeypatch.setattr(solver, "fp_residual", spy)
    cauchy_loss(model, model.out_scale, sde, ds.sample, ds.score_fn(sde), cfg, torch.Generator().manual_seed(2))
    assert seen == [time_method]


def test_config_and_cli_reject_bad_curriculum_and_schedule(tmp_path):
    for bad in (dict(curriculum=1.5), dict(curriculum=-0.1), dict(curriculum=True), dict(lr_schedule="linear"),
                dict(time_method="forward")):
        with pytest.raises(ValueError):
            CauchyConfig(**bad)
    for args, needle in ((["--curriculum", "2"], "--curriculum"), (["--lr-schedule", "linear"], "--lr-schedule"),
                         (["--time-method", "forward"], "--time-method")):
        out = tmp_path / "run"
        res = CliRunner().invoke(main, ["cauchy", *args, "--out", str(out)])
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not out.exists()


def test_the_command_defaults_are_the_measured_setting(tmp_path):
    """`scorefpe cauchy` without options trains VE with mixed collocation, a quarter of the
    points uniform, no adaptive collocation (docs/results/cauchy.md), while CauchyConfig keeps
    the paper's defaults."""
    out = tmp_path / "run"
    small = ["--hidden", "16", "--depth", "2", "--batch-size", "32", "--ic-batch-size", "32", "--no-baseline"]
    res = CliRunner().invoke(main, ["cauchy", *small, "--steps", "2", "--stop-after", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "pinn" / "config.json").read_text())
    assert [saved[k] for k in ("sde", "collocation", "uniform_fraction", "rad_every", "steps", "residual")] == \
        ["ve", "mixed", 0.25, 0, 2, "exact"]
    paper = CauchyConfig()
    assert (paper.collocation, paper.rad_every) == ("data", 0)


def test_the_command_warns_that_mixed_collocation_breaks_the_checkerboard(tmp_path):
    """The default's mixed collocation is ill-posed on the checkerboard (docs/results/cauchy.md):
    the command says so on stderr and names the usable choice; with --collocation data it does not."""
    small = ["--dataset", "checkerboard", "--hidden", "16", "--depth", "2", "--batch-size", "16",
             "--ic-batch-size", "16", "--no-baseline", "--steps", "2", "--stop-after", "1"]
    warned = CliRunner().invoke(main, ["cauchy", *small, "--out", str(tmp_path / "a")])
    assert warned.exit_code == 0, warned.output
    assert "--collocation data" in warned.stderr
    quiet = CliRunner().invoke(main, ["cauchy", *small, "--collocation", "data", "--out", str(tmp_path / "b")])
    assert quiet.exit_code == 0, quiet.output
    assert "warning" not in quiet.stderr
