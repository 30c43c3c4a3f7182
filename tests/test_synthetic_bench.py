"""Synthetic benchmark: training on a few steps, evaluation against the closed form, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from scorefpe.benchmarks.report import format_table
from scorefpe.benchmarks.synthetic import (
    BenchmarkConfig,
    EvalConfig,
    SyntheticRunConfig,
    _grid_divergences,
    evaluate_score,
    load_synthetic_run,
    train_synthetic_run,
)
from scorefpe.data.synthetic import get_dataset
from scorefpe.sde import VESDE, VPSDE

TINY = dict(steps=4, batch_size=32, hidden=16, depth=2, log_every=1)


@pytest.mark.parametrize("penalty", ["none", "fpd"])
def test_training_a_few_steps_writes_a_loadable_run(tmp_path, penalty):
    cfg = SyntheticRunConfig(dataset="gmm2d", sde="vp", penalty=penalty, alpha=1e-2, **TINY)
    timing = train_synthetic_run(cfg, tmp_path / "run")
    assert timing["steps"] == 4 and timing["steps_per_s"] > 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in steps)
    if penalty == "fpd":
        # The regulariser is a logged, positive term of the loss.
        assert all(r["terms"]["fpd"] > 0 for r in steps)
        assert steps[-1]["loss"] > steps[-1]["terms"]["dsm"]
    else:
        assert set(steps[-1]["terms"]) == {"dsm"}
    model, cfg2 = load_synthetic_run(tmp_path / "run", ema=False)
    assert cfg2 == cfg
    # Training moved the weights away from the seed's initialisation.
    from scorefpe.benchmarks.synthetic import build_model

    init, _, _ = build_model(cfg)
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(model.parameters(), init.parameters()))
    assert diff > 0
    x = torch.zeros(3, 2)
    assert model(x, torch.full((3,), 0.5)).shape == (3, 2)


def test_fp_regulariser_changes_the_trained_weights(tmp_path):
    # alpha must reach the gradient: same seed and batches, different alpha -> different weights.
    a = SyntheticRunConfig(dataset="gmm8", sde="ve", penalty="fpd", alpha=1e-3, **TINY)
    b = SyntheticRunConfig(dataset="gmm8", sde="ve", penalty="fpd", alpha=1e-1, **TINY)
    train_synthetic_run(a, tmp_path / "a")
    train_synthetic_run(b, tmp_path / "b")
    ma, _ = load_synthetic_run(tmp_path / "a", ema=False)
    mb, _ = load_synthetic_run(tmp_path / "b", ema=False)
    assert any(not torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))


def test_grid_divergences_match_gaussian_kl():
    # Two unit Gaussians 0.5 apart on a fine grid: KL = 0.5^2 / 2, TV = 2 Phi(0.25) - 1.
    x = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    h = float(x[1] - x[0])
    lq = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    lp = -0.5 * (x - 0.5) ** 2 - 0.5 * math.log(2 * math.pi)
    out = _grid_divergences(lp, lq, h)
    assert out["kl"] == pytest.approx(0.125, rel=1e-6)
    assert out["tv"] == pytest.approx(math.erf(0.25 / math.sqrt(2)), rel=1e-4)
    same = _grid_divergences(lq, lq, h)
    assert same["kl"] == pytest.approx(0.0, abs=1e-15) and same["tv"] == 0.0


def test_closed_form_score_scores_as_ground_truth():
    # The exact score through the whole evaluation: gap ~ 0 within the ODE/prior error and a
    # few standard errors, KL ~ 0, r_FP at float64 round-off. gmm1d: 1-D, so no curl.
    sde = VPSDE()
    ds = get_dataset("gmm2d")
    ecfg = EvalConfig(n_test=64, grid=12, n_t=3, n_points=16, rtol=1e-6, atol=1e-6)
    ev = evaluate_score(ds.score_fn(sde), sde, ds, t_min=1e-3, dtype=torch.float64, ecfg=ecfg)
    assert abs(ev["gap"]) < 4 * ev["gap_se"] + 0.05
    assert ev["kl"] < 0.05 and ev["tv"] < 0.1
    assert ev["curl_mse"] < 1e-20
    assert ev["r_fp"] < 1e-20
    assert ev["nll"] == pytest.approx(ev["true_nll"], abs=0.05)
    ds1 = get_dataset("gmm1d")
    ev1 = evaluate_score(ds1.score_fn(VESDE()), VESDE(), ds1, t_min=1e-3, dtype=torch.float64,
                         ecfg=ecfg)
    assert ev1["curl_mse"] is None and ev1["r_fp"] < 1e-20
    # Without the ODE (the checkerboard's exact score is too stiff for it) the curves remain.
    ds2 = get_dataset("checkerboard")
    ev2 = evaluate_score(ds2.score_fn(sde), sde, ds2, t_min=1e-3, dtype=torch.float64, ecfg=ecfg,
                         ode=False)
    assert ev2["nll"] is None and ev2["kl"] is None
    assert ev2["curl_mse"] < 1e-20 and ev2["r_fp"] < 1e-20


def test_format_table_rows():
    ev = {"nll": 1.0, "true_nll": 0.5, "gap": 0.5, "kl": 0.1, "tv": 0.2, "curl_mse": 0.3,
          "r_fp": 4.0, "r_dsm": 5.0}
    tr = {"seconds": 10.0, "steps_per_s": 100.0}
    recs = [
        {"dataset": "gmm2d", "model": "FP a=0.01", "seed": 0, "train": tr, "eval": ev},
        {"dataset": "gmm2d", "model": "DSM", "seed": 0, "train": tr, "eval": ev},
        {"dataset": "gmm2d", "model": "DSM", "seed": 1, "train": tr, "eval": dict(ev, nll=3.0)},
        {"dataset": "gmm2d", "model": "closed form", "seed": None, "train": None, "eval": ev},
    ]
    rows = format_table(recs).strip().splitlines()
    assert len(rows) == 2 + 3
    assert rows[2].startswith("| gmm2d | DSM | 0,1 | 2 ± 1.4 |")
    assert "FP a=0.01" in rows[3] and "closed form" in rows[4]


def test_benchmark_config_validates():
    with pytest.raises(ValueError, match="nope"):
        BenchmarkConfig(datasets=("nope",))
    with pytest.raises(ValueError, match="alpha"):
        BenchmarkConfig(alphas=(-1.0,))
    with pytest.raises(ValueError, match="penalty"):
        SyntheticRunConfig(penalty="l2")
    with pytest.raises(ValueError, match="omega"):
        SyntheticRunConfig(omega="two")
    runs = BenchmarkConfig(datasets=("gmm2d",), seeds=(0, 1), alphas=(1e-3,)).runs()
    assert [r for r, _ in runs] == ["gmm2d/dsm_s0", "gmm2d/fp0.001_s0", "gmm2d/dsm_s1",
                                    "gmm2d/fp0.001_s1"]


# --- CLI ------------------------------------------------------------------------------------


def _train_cli(runner, out, dataset="gmm2d"):
    return runner.invoke(main, ["train", "synthetic", "--dataset", dataset, "--sde", "vp",
                                "--steps", "3", "--batch-size", "16", "--hidden", "8",
                                "--depth", "1", "--out", str(out)])


def test_cli_train_likelihood_curl(tmp_path):
    runner = CliRunner()
    r = _train_cli(runner, tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    r = runner.invoke(main, ["likelihood", str(tmp_path / "run"), "--n", "8", "--rtol", "1e-3",
                             "--atol", "1e-3", "--json", str(tmp_path / "lik.json")])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "lik.json").read_text())
    assert math.isfinite(out["nll"]) and out["gap"] == pytest.approx(out["nll"] - out["true_nll"])
    r = runner.invoke(main, ["curl", str(tmp_path / "run"), "--n-t", "2", "--n-points", "4",
                             "--closed-form"])
    assert r.exit_code == 0, r.output
    assert "time-averaged curl MSE" in r.output
    # A second fresh run into the same directory is refused.
    r = _train_cli(runner, tmp_path / "run")
    assert r.exit_code == 2 and "checkpoint" in r.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "synthetic", "--dataset", "moons", "--out", "X"], "moons"),
        (["train", "synthetic", "--alpha", "-1", "--out", "X"], "-1"),
        (["benchmark", "synthetic", "--out", "X", "--datasets", "gmm2d,moons"], "moons"),
        (["benchmark", "synthetic", "--out", "X", "--alphas", "abc"], "abc"),
        (["benchmark", "synthetic", "--out", "X", "--alphas", "-0.1"], "alpha"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, args, needle):
    args = [str(tmp_path / "X") if a == "X" else a for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert not (tmp_path / "X").exists()


def test_cli_run_dir_errors(tmp_path):
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    r = runner.invoke(main, ["likelihood", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "config.json" in r.output
    r = runner.invoke(main, ["curl", str(tmp_path / "missing")])
    assert r.exit_code == 2
    assert _train_cli(runner, tmp_path / "r1", dataset="gmm1d").exit_code == 0
    r = runner.invoke(main, ["curl", str(tmp_path / "r1")])
    assert r.exit_code == 2 and "1-D" in r.output
