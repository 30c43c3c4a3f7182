"""Tests of the Cauchy solver's robustness options (issue 15): an EMA of the weights for
evaluation (`CauchyConfig.ema`) and causal weighting in t (`CauchyConfig.causal_eps`,
`scorefpe.pinn.solver.causal_weights`). Both off by default, with the losses of before."""

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
from scorefpe.experiments.cauchy import train_run
from scorefpe.pinn import CauchyConfig, TrainState, cauchy_loss, train
from scorefpe.pinn.solver import causal_weights
from scorefpe.sde import make_sde
from scorefpe.training.ema import EMA

TINY = dict(dataset="gmm2d", sde="ve", steps=6, batch=32, batch_ic=32, hidden=16, depth=2,
            collocation="mixed")


# ---------------------------------------------------------------- causal weights


def test_causal_weights_are_one_until_the_first_nonzero_bin_then_decay():
    """4 bins of [0, 1], bin means L = (0, 0, 2, 3), eps = 0.5: W = (1, 1, 1, e^-1) (the
    residual of bin 3 is not yet counted for bin 3 itself); a start term 1 multiplies all by
    e^-0.5; the loss is sum W_i L_i / 4."""
    t = torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 0.9], dtype=torch.float64)
    r = torch.tensor([0.0, 0.0, 0.0, 1.0, 3.0, 3.0], dtype=torch.float64)  # bins 0, 0, 1, 2, 2, 3
    w, loss = causal_weights(t, r, 0.0, 1.0, 4, 0.5)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 1.0, math.exp(-1.0)], dtype=torch.float64),
                               rtol=1e-15, atol=0)
    torch.testing.assert_close(loss, (2.0 + 3 * math.exp(-1.0)) / 4 * torch.ones((), dtype=torch.float64))
    w1, _ = causal_weights(t, r, 0.0, 1.0, 4, 0.5, start=1.0)
    torch.testing.assert_close(w1, w * math.exp(-0.5), rtol=1e-15, atol=0)


def test_causal_weights_skip_empty_bins_and_are_detached():
    """An empty bin has L = 0 and does not count in the mean; the weights carry no gradient, so
    d loss / d r_j = W_bin(j) / (count_bin(j) * non-empty bins)."""
    t = torch.tensor([0.05, 0.1, 0.8], dtype=torch.float64)  # bins 0, 0, 3 of 4; 1 and 2 empty
    r = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64, requires_grad=True)
    w, loss = causal_weights(t, r, 0.0, 1.0, 4, 2.0)
    expect_w = torch.tensor([1.0, math.exp(-4.0), math.exp(-4.0), math.exp(-4.0)], dtype=torch.float64)
    torch.testing.assert_close(w, expect_w, rtol=1e-15, atol=0)
    assert not w.requires_grad
    loss.backward()
    g = torch.tensor([1 / 4, 1 / 4, math.exp(-4.0) / 2], dtype=torch.float64)
    torch.testing.assert_close(r.grad, g, rtol=1e-15, atol=0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_bins=st.integers(1, 10), eps=st.floats(0.0, 20.0))
def test_causal_weights_match_an_explicit_loop_over_bins(seed, n_bins, eps):
    """W_i = exp(-eps sum_{k<i} L_k), L_k the mean over the points with t in the k-th of n equal
    bins of [t_min, T] (empty: 0), computed bin by bin with masks."""
    g = torch.Generator().manual_seed(seed)
    t_min, T = 1e-3, 1.0
    t = t_min + (T - t_min) * torch.rand(50, generator=g, dtype=torch.float64)
    r = torch.rand(50, generator=g, dtype=torch.float64) * 0.3
    w, loss = causal_weights(t, r, t_min, T, n_bins, eps)
    h = (T - t_min) / n_bins
    means = []
    for k in range(n_bins):
        m = (t >= t_min + k * h) & ((t < t_min + (k + 1) * h) if k < n_bins - 1 else (t <= T))
        means.append(float(r[m].mean()) if m.any() else 0.0)
    ref_w = [math.exp(-eps * sum(means[:k])) for k in range(n_bins)]
    n_full = sum(1 for k in range(n_bins) if (means[k] != 0.0))
    torch.testing.assert_close(w, torch.tensor(ref_w, dtype=torch.float64), rtol=1e-12, atol=1e-300)
    assert float(loss) == pytest.approx(sum(a * b for a, b in zip(ref_w, means)) / n_full, rel=1e-12)


def _captured_loss(cfg, monkeypatch):
    """cauchy_loss of the TINY model on one draw, and the residual recomputed from the captured
    eps with the formula of the runs before this option: mean_b w^2 ||eps_b||^2, then / D."""
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    from scorefpe.experiments.cauchy import build_model

    model = build_model(cfg, ds, sde, n_scale=2000)
    seen = {}
    real = solver.fp_residual

    def spy(score_fn, sde_, x, t, **kw):
        seen["eps"], seen["t"] = real(score_fn, sde_, x, t, **kw), t
        return seen["eps"]

    monkeypatch.setattr(solver, "fp_residual", spy)
    terms = cauchy_loss(model, model.out_scale, sde, ds.sample, ds.score_fn(sde), cfg,
                        torch.Generator().manual_seed(3))
    w = solver.residual_weight(model.out_scale, sde, seen["t"], solver.Weighting(cfg.weighting))
    ref = (w[:, None] ** 2 * seen["eps"].pow(2)).sum(-1).mean() / 2
    return terms, ref


def test_losses_with_both_options_off_are_the_formula_of_before(monkeypatch):
    """Defaults (ema 0, causal_eps 0): the terms are residual, initial, total, the residual is
    bit-identical to the old formula and total = residual + ic_weight * initial exactly."""
    terms, ref = _captured_loss(CauchyConfig(**TINY, ic_weight=3.0), monkeypatch)
    assert set(terms) == {"residual", "initial", "total"}
    assert torch.equal(terms["residual"], ref)
    assert torch.equal(terms["total"], terms["residual"] + 3.0 * terms["initial"])


def test_causal_loss_with_one_bin_and_tiny_eps_is_the_plain_residual(monkeypatch):
    """One bin, eps = 1e-12: every weight is exp(-1e-12 * IC) = 1 to round-off and the causal
    residual is the mean over all points (float32: within 1e-6 relative)."""
    terms, ref = _captured_loss(CauchyConfig(**TINY, causal_eps=1e-12, causal_bins=1), monkeypatch)
    assert torch.equal(terms["residual"], ref)
    assert float(terms["causal_w_last"]) == pytest.approx(1.0, abs=1e-10)
    assert float(terms["residual_causal"]) == pytest.approx(float(ref), rel=1e-6)
    assert float(terms["total"]) == pytest.approx(float(terms["residual_causal"] + terms["initial"]), rel=1e-6)


def test_causal_loss_down_weights_later_bins_while_the_fit_is_poor(monkeypatch):
    """At initialisation (IC term ~1, residual O(0.1-1)) eps = 10 must weight the last of 8 bins
    by exp(-10 (IC + earlier bins)) < 1e-3, and the causal residual must be below the plain one."""
    terms, _ = _captured_loss(CauchyConfig(**TINY, causal_eps=10.0), monkeypatch)
    assert float(terms["causal_w_last"]) < 1e-3
    assert float(terms["residual_causal"]) < float(terms["residual"])


# ---------------------------------------------------------------- EMA


def test_ema_weights_are_the_closed_form_average_of_the_trajectory():
    """After n steps theta_ema = d^n theta_0 + (1 - d) sum_{k=1}^n d^(n-k) theta_k, theta_k the
    weights after step k (float64: agreement to ~1e-14)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    target = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xs = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cfg = CauchyConfig(steps=25, lr=0.05)
    d = 0.8
    ema = EMA(model, d)
    snaps = [{k: v.detach().clone() for k, v in model.state_dict().items()}]

    def loss_fn(gen):
        loss = (model(xs) - target).pow(2).mean()
        return {"fit": loss, "total": loss}

    train(model, loss_fn, torch.optim.Adam(model.parameters(), lr=cfg.lr), torch.Generator(), cfg,
          TrainState(), ema=ema, callback=lambda s, r: snaps.append(
              {k: v.detach().clone() for k, v in model.state_dict().items()}))
    n = cfg.steps
    for k in snaps[0]:
        expect = d**n * snaps[0][k] + (1 - d) * sum(d ** (n - j) * snaps[j][k] for j in range(1, n + 1))
        torch.testing.assert_close(ema.shadow[k], expect, rtol=0, atol=1e-13)
        assert not torch.allclose(ema.shadow[k], snaps[-1][k], atol=1e-4)  # it is not the last iterate


def test_ema_run_trains_the_same_trajectory_and_evaluates_the_average(tmp_path):
    """With ema > 0 the loss history and the checkpoint's raw weights are bit-identical to the
    run without (the EMA does not enter the loss); the returned model holds the checkpoint's EMA
    weights; stopped at 3 and resumed to 6 it equals the uninterrupted EMA run."""
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    base = train_run(CauchyConfig(**TINY), ds, sde, tmp_path / "base")
    cfg = CauchyConfig(**TINY, ema=0.5)
    full = train_run(cfg, ds, sde, tmp_path / "ema")
    read = lambda p: [json.loads(r) for r in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert read(tmp_path / "ema") == read(tmp_path / "base")
    ck = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)
    for k, v in base.model.state_dict().items():
        assert torch.equal(ck["model"][k], v)
        assert torch.equal(full.model.state_dict()[k], ck["ema"][k])
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])
    train_run(cfg, ds, sde, tmp_path / "part", stop_after=3)
    rest = train_run(cfg, ds, sde, tmp_path / "part", resume=True)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(rest.model.state_dict()[k], v, rtol=0, atol=1e-6)


def test_config_and_cli_reject_bad_robustness_options(tmp_path):
    for bad in (dict(ema=1.0), dict(ema=-0.1), dict(causal_eps=-1.0), dict(causal_eps=math.inf),
                dict(causal_bins=0)):
        with pytest.raises(ValueError):
            CauchyConfig(**bad)
    for args, needle in ((["--ema", "1"], "--ema"), (["--causal-eps", "-1"], "--causal-eps"),
                         (["--causal-eps", "nan"], "--causal-eps"), (["--causal-bins", "0"], "--causal-bins")):
        out = tmp_path / "run"
        res = CliRunner().invoke(main, ["cauchy", *args, "--out", str(out)])
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not out.exists()


def test_cli_passes_the_robustness_options_to_the_saved_config(tmp_path):
    out = tmp_path / "run"
    small = ["--hidden", "16", "--depth", "2", "--batch-size", "32", "--ic-batch-size", "32", "--no-baseline"]
    res = CliRunner().invoke(main, ["cauchy", *small, "--steps", "2", "--stop-after", "1", "--ema", "0.99",
                                    "--causal-eps", "5", "--causal-bins", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "pinn" / "config.json").read_text())
    assert (saved["ema"], saved["causal_eps"], saved["causal_bins"]) == (0.99, 5.0, 4)
