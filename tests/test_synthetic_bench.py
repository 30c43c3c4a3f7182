"""Synthetic benchmark: training on a few steps, evaluation against the closed form, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from scorefpe.cli.main import main
from scorefpe.experiments.synthetic_report import compute_seconds, format_table, plot_curves, table_markdown
from scorefpe.experiments.synthetic_bench import (
    BenchmarkConfig,
    EvalConfig,
    SyntheticRunConfig,
    _grid_divergences,
    evaluate_score,
    heldout_likelihood,
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
    from scorefpe.experiments.synthetic_bench import build_model

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


def test_heldout_likelihood_of_the_exact_score_has_no_gap():
    # With the exact score the ODE density p_{t_min} is q_{t_min} except for (a) the ODE's
    # error and (b) the prior N(0, I) standing in for q_T. (b): KL(q_T || N(0, I)) <= mean over
    # components of 1/2 (a^2 |m|^2 + D (s - 1 - ln s)), s = 1 - a^2 (1 - std^2), a = a(T), for
    # gmm8 (|m| = 1, std 0.1) about 2e-5, plus its sampling noise (in gap_se). (a): RK45 keeps
    # each step's local error below atol + rtol |y|, at most nfe / 6 steps, |y| < 20 here
    # (|x| < 5, |log q_{t_min} - log N| < 15 nats).
    sde, ds = VPSDE(), get_dataset("gmm8")
    tol, n = 1e-6, 32
    a2 = float(sde.mean_coeff(torch.tensor(sde.T, dtype=torch.float64))) ** 2
    s = 1 - a2 * (1 - 0.1**2)
    kl_prior = 0.5 * (a2 * 1.0**2 + 2 * (s - 1 - math.log(s)))

    def run(score_fn):
        return heldout_likelihood(score_fn, sde, ds, t_min=1e-3, n=n, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0), rtol=tol, atol=tol)

    exact = ds.score_fn(sde)
    res = run(exact)
    ode_err = res["nfe"] / 6 * (tol + tol * 20)
    assert abs(res["gap"]) < 4 * res["gap_se"] + kl_prior + ode_err
    assert res["nll"] == pytest.approx(res["true_nll"], abs=4 * res["gap_se"] + kl_prior + ode_err)
    # A wrong score (10 % too small) fails the same bound.
    bad = run(lambda x, t: 0.9 * exact(x, t))
    assert bad["gap"] > 10 * (4 * res["gap_se"] + kl_prior + ode_err)
    # Without a closed-form density there is no gap; bad sizes are refused.
    sw = heldout_likelihood(exact, sde, get_dataset("swissroll"), t_min=1e-3, n=4,
                            dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                            rtol=1e-3, atol=1e-3)
    assert sw["gap"] is None and sw["true_nll"] is None and math.isfinite(sw["nll"])
    with pytest.raises(ValueError, match="n must be"):
        heldout_likelihood(exact, sde, ds, t_min=1e-3, n=1, dtype=torch.float64,
                           generator=torch.Generator())


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


def test_table_markdown_header_and_compute_time():
    from scorefpe._util import cpu_name

    ev = {"nll": 1.0, "true_nll": 0.5, "gap": 0.5, "kl": 0.1, "tv": 0.2, "curl_mse": 0.3,
          "r_fp": 4.0, "r_dsm": 5.0, "seconds": 2.5}
    recs = [{"dataset": "gmm2d", "model": "DSM", "seed": 0, "train": {"seconds": 10.0,
                                                                     "steps_per_s": 1.0},
             "eval": ev},
            {"dataset": "gmm2d", "model": "closed form", "seed": None, "train": None, "eval": ev}]
    assert compute_seconds(recs) == 10.0 + 2.5 + 2.5
    text = table_markdown(recs, "scorefpe benchmark synthetic --out X", 99.0)
    assert text.startswith("Command: `scorefpe benchmark synthetic --out X`\n\n")
    n = torch.get_num_threads()
    assert (f"Machine: {cpu_name()}, torch {torch.__version__}, {n} "
            f"thread{'' if n == 1 else 's'}. Sum over models of training + evaluation time: 15 s; wall time of this "
            "invocation: 99 s") in text
    assert text.endswith(format_table(recs))


def test_plot_curves_skips_a_curve_no_data_set_has(tmp_path):
    # 1-D sets have no curl: no empty figure (matplotlib refuses 0 panels), None returned.
    rec = {"dataset": "gmm1d", "model": "DSM", "seed": 0, "train": None,
           "eval": {"curves": {"r_fp": {"t": [0.1, 1.0], "mean": [1.0, 2.0], "se": [0.0, 0.0]}}}}
    assert plot_curves([rec], "curl", tmp_path / "c.png", "title", "y") is None
    assert not (tmp_path / "c.png").exists()
    assert plot_curves([rec], "r_fp", tmp_path / "r.png", "title", "y") == tmp_path / "r.png"
    assert (tmp_path / "r.png").stat().st_size > 1000


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
                             "--atol", "1e-3", "--seed", "5", "--json", str(tmp_path / "lik.json")])
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "lik.json").read_text())
    # The CLI passes its run, seed and tolerances to the library: the same numbers come back.
    model, cfg = load_synthetic_run(tmp_path / "run", ema=False)
    ds, sde = get_dataset("gmm2d"), VPSDE()
    lib = heldout_likelihood(model, sde, ds, t_min=cfg.t_min, n=8, dtype=torch.float32,
                             generator=torch.Generator().manual_seed(5), rtol=1e-3, atol=1e-3)
    for k in ("nll", "nll_se", "true_nll", "gap", "gap_se", "nfe"):
        assert out[k] == pytest.approx(lib[k], rel=1e-12), k
    assert out["nll_se"] > 0 and out["gap_se"] > 0
    # --hutchinson K --probe P reach the library (default probe: rademacher)
    for probe_args, probe in (([], "rademacher"), (["--probe", "gaussian"], "gaussian")):
        r = runner.invoke(main, ["likelihood", str(tmp_path / "run"), "--n", "8", "--rtol", "1e-3",
                                 "--atol", "1e-3", "--seed", "5", "--hutchinson", "2", *probe_args,
                                 "--json", str(tmp_path / "lik_h.json")])
        assert r.exit_code == 0, r.output
        got = json.loads((tmp_path / "lik_h.json").read_text())
        lib = heldout_likelihood(model, sde, ds, t_min=cfg.t_min, n=8, dtype=torch.float32,
                                 generator=torch.Generator().manual_seed(5), rtol=1e-3, atol=1e-3,
                                 n_probes=2, probe=probe)
        assert got["divergence"] == f"hutchinson K=2 {probe}"
        assert got["nll"] == pytest.approx(lib["nll"], rel=1e-12)
    # Curl of the exact score, a gradient: float64 round-off only. For gmm2d under VP every
    # component of q_t has covariance I, so J = -I + w1 w2 a(t)^2 (m1 - m2)(m1 - m2)^T and
    # ||J|| <= 1 + |m1 - m2|^2 / 4 = 26; with ~10 rounding steps per entry the asymmetry
    # |J12 - J21| <= 2 * 10 eps ||J|| = 1.2e-13, so 1/2 ||J - J^T||_F^2 = (J12 - J21)^2 < 1e-25.
    eps = torch.finfo(torch.float64).eps
    bound = (2 * 10 * eps * (1 + 10.0**2 * 2 / 4)) ** 2
    for flag, js in (("--closed-form", "curl_cf.json"), (None, "curl_model.json")):
        args = ["curl", str(tmp_path / "run"), "--n-t", "3", "--n-points", "16",
                "--json", str(tmp_path / js)] + ([flag] if flag else [])
        r = runner.invoke(main, args)
        assert r.exit_code == 0, r.output
        assert "curl MSE averaged over t ~ U[t_min, T]" in r.output
    cf = json.loads((tmp_path / "curl_cf.json").read_text())
    assert cf["what"] == "closed-form score" and 0 <= cf["time_average"] < bound
    # The bound separates: a network (not a gradient by construction) is far above it.
    assert json.loads((tmp_path / "curl_model.json").read_text())["time_average"] > 1e6 * bound
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


def test_a_diverged_training_is_reported_and_the_benchmark_goes_on(tmp_path, monkeypatch):
    """A NonFiniteLossError in one training: that run gets diverged.json and a line in table.md,
    the others are trained, evaluated and tabulated, and a second call reuses the record
    instead of training again (the draws are seeded: it would diverge again)."""
    import scorefpe.experiments.synthetic_bench as sb
    from scorefpe.experiments import synthetic_report as report
    from scorefpe.training import NonFiniteLossError

    real = sb.train_synthetic_run
    calls = []

    def fake(cfg, run_dir, **kw):
        calls.append((cfg.penalty, cfg.seed))
        if cfg.penalty == "fpd" and cfg.seed == 1:
            raise NonFiniteLossError(3, "gradient", float("nan"), 2)
        return real(cfg, run_dir, **kw)

    monkeypatch.setattr(sb, "train_synthetic_run", fake)
    bcfg = sb.BenchmarkConfig(datasets=("gmm1d",), sde="ve", alphas=(1e-3,), seeds=(0, 1),
                              steps=4, eval=EvalConfig(n_test=8, grid=4, n_t=3, n_points=8))
    recs = sb.run_benchmark(bcfg, tmp_path)
    div = [r for r in recs if r.get("diverged")]
    assert [(r["model"], r["seed"], r["eval"]) for r in div] == [("FP a=0.001", 1, None)]
    assert div[0]["diverged"]["step"] == 3 and div[0]["diverged"]["steps"] == 4
    assert (tmp_path / "runs" / "gmm1d" / "fp0.001_s1" / sb.DIVERGED_NAME).is_file()
    assert not (tmp_path / "runs" / "gmm1d" / "fp0.001_s1" / "eval.json").exists()
    rows = {line.split("|")[2].strip(): line.split("|")[3].strip()
            for line in report.format_table(recs).splitlines()[2:]}
    assert rows == {"DSM": "0,1", "FP a=0.001": "0", "closed form": "-"}
    md = report.table_markdown(recs, "cmd", 1.0)
    assert "- gmm1d FP a=0.001 seed 1: gradient = nan at step 3 of 4" in md
    csv_text = report.curves_csv(recs, "r_fp")
    assert "FP a=0.001,0," in csv_text and "FP a=0.001,1," not in csv_text
    n = len(calls)
    again = sb.run_benchmark(bcfg, tmp_path)
    assert len(calls) == n  # nothing retrained
    assert [r.get("diverged") for r in again] == [r.get("diverged") for r in recs]
