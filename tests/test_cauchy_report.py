"""Tests of the seed overlay of `scorefpe cauchy` runs (scorefpe.experiments.cauchy_report and
`scorefpe cauchy-report`).

Three tiny gmm2d VE runs (seeds 0-2, 4 solver steps, a 16x2 network, EMA on so that the loaded
weights matter) and one gmm1d run are trained once per module through `run_cauchy`
(~1-2 s each); the report's numbers are checked against the results.json files, read here
with json alone.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from scorefpe.cli.main import main
from scorefpe.data.synthetic import get_dataset
from scorefpe.experiments.cauchy import CauchyEvalConfig, build_model, load_run_model, run_cauchy
from scorefpe.experiments.cauchy_report import (
    log_ratio_tolerance,
    CauchyRunError,
    collect_overlay,
    density_line,
    line_log_density,
    mass_below,
    plot_seed_overlay,
    read_cauchy_run,
    seed_overlay,
    true_line_density,
)
from scorefpe.pinn import CauchyConfig
from scorefpe.pinn.evaluate import score_error_curve
from scorefpe.residuals import Spacing, time_grid
from scorefpe.sde import make_sde

TINY = dict(sde="ve", steps=4, batch=32, batch_ic=32, hidden=16, depth=2, ema=0.5, collocation="mixed")
EVAL = CauchyEvalConfig(n_samples=40, em_steps=5, n_points=64, n_fp_points=8, n_density=0, density_grid=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """gmm2d seeds 0, 1, 2 and gmm1d seed 0, each a finished run directory."""
    root = tmp_path_factory.mktemp("cauchy_runs")
    out = {}
    for name, dataset, seed in (("g2_s0", "gmm2d", 0), ("g2_s1", "gmm2d", 1), ("g2_s2", "gmm2d", 2),
                                ("g1_s0", "gmm1d", 0)):
        ds, sde = get_dataset(dataset), make_sde("ve")
        run_cauchy(CauchyConfig(dataset=dataset, seed=seed, **TINY), ds, sde, root / name,
                   baseline=False, eval_cfg=EVAL)
        out[name] = root / name
    return out


def gmm2d_runs(runs: dict[str, Path]) -> list[Path]:
    return [runs["g2_s0"], runs["g2_s1"], runs["g2_s2"]]


def _tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------------------
# The numbers: CSV == results.json.
def test_csv_rows_equal_the_results_json_numbers(runs, tmp_path):
    res = seed_overlay(gmm2d_runs(runs), tmp_path / "rep" / "seeds.png", times=(0.001, 0.5, 1.0), n_line=201)
    assert res.png.is_file() and res.png.stat().st_size > 10_000
    assert res.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with res.csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["seed"]) for r in rows] == [0, 1, 2]
    for row, d in zip(rows, gmm2d_runs(runs)):
        stored = json.loads((d / "results.json").read_text())
        ev = stored["runs"]["pinn"]["eval"]
        band = [e for t, e in zip(ev["t_grid"], ev["rel_err"]) if 0.05 - 1e-12 <= t <= 1.0 + 1e-12]
        assert len(band) == 20  # evaluate_model's uniform grid on [0.05, 1]
        # the CSV holds repr() of the floats: the band mean is exact up to the summation order
        assert float(row["mean_rel_err"]) == pytest.approx(sum(band) / len(band), rel=1e-12)
        assert float(row["mean_rel_err"]) == pytest.approx(ev["mean_rel_err"], rel=1e-6)  # float32 mean there
        assert float(row["max_rel_err"]) == max(band)
        assert ev["rel_err"][ev["t_grid"].index(float(row["t_at_max"]))] == max(band)
        for sampler in ("em", "ode"):
            w = ev["samples"][sampler]["mode_weights"]
            assert [float(row[f"w_{sampler}_{k}"]) for k in range(2)] == w
            assert float(row[f"dev_{sampler}"]) == pytest.approx(max(abs(w[0] - 0.2), abs(w[1] - 0.8)), abs=1e-15)
        assert [float(row["w_true_0"]), float(row["w_true_1"])] == pytest.approx([0.2, 0.8], abs=1e-15)
        assert row["dataset"] == "gmm2d" and row["sde"] == "ve" and int(row["steps"]) == 4
        # the true slice's first-mode mass is the data weight 0.2 while the modes are apart
        for t in ("0.001", "0.5"):
            assert float(row[f"slice_w1_true_t{t}"]) == pytest.approx(0.2, abs=2e-3)
            assert 0.0 <= float(row[f"slice_w1_t{t}"]) <= 1.0


def test_the_figure_has_one_line_per_run_in_every_panel(runs):
    data = collect_overlay(gmm2d_runs(runs), times=(0.001, 0.5, 1.0), n_line=201)
    fig = plot_seed_overlay(data.runs, data.rows, data.densities, title=data.title, log_ratio=data.log_ratio)
    try:
        axes = fig.axes
        assert len(axes) == 5
        for ax in axes:
            assert len([ln for ln in ax.get_lines() if ln.get_gid() == "run"]) == 3
        # panel (b): each run's log-ratio error, as log_ratio_error of its model computes it,
        # and the +- 0.03 / (0.2 * 0.8) band
        from scorefpe.pinn import log_ratio_error

        ds, sde = get_dataset("gmm2d"), make_sde("ve")
        for ln, r, row in zip([ln for ln in axes[1].get_lines() if ln.get_gid() == "run"], data.runs, data.rows):
            m = load_run_model(r.run_dir / "pinn")[0]
            want = log_ratio_error(m, ds.score_fn(sde), sde, ds.truth.means, torch.tensor(r.t_grid, dtype=torch.float64))
            assert list(ln.get_xdata()) == list(r.t_grid)
            assert list(ln.get_ydata()) == pytest.approx(want[:, 0].tolist(), rel=1e-12, abs=1e-12)
            assert row["log_ratio_err_t_min"] == pytest.approx(abs(float(want[0, 0])), rel=1e-12)
        assert log_ratio_tolerance((0.2, 0.8)) == pytest.approx(0.1875, rel=1e-12)
        labels = [ln.get_label() for ln in axes[0].get_lines() if ln.get_gid() == "run"]
        for lab, row in zip(labels, data.rows):
            # seed, band mean and the first mode's learned weight of each sampler
            assert lab.startswith(f"seed {row['seed']}: {100 * row['mean_rel_err']:.2f} %")
            assert f"EM {row['w_em_0']:.3f}" in lab and f"ODE {row['w_ode_0']:.3f}" in lab
            miss = row["mean_rel_err"] >= 0.05 or max(row["dev_em"], row["dev_ode"]) > 0.03
            assert lab.endswith("MISS") == miss
        # the score-error lines are the stored curves, in %
        first = [ln for ln in axes[0].get_lines() if ln.get_gid() == "run"][0]
        ev = json.loads((runs["g2_s0"] / "results.json").read_text())["runs"]["pinn"]["eval"]
        assert list(first.get_xdata()) == ev["t_grid"]
        assert list(first.get_ydata()) == pytest.approx([100 * e for e in ev["rel_err"]], rel=1e-12)
        # the 5 % target line is there
        assert any(ln.get_gid() != "run" and list(ln.get_ydata()) == [5, 5] for ln in axes[0].get_lines())
        # each density panel: the true curve integrates to 1 on its range
        for (t, dl, (s, p), learned) in data.densities:
            assert float(torch.trapezoid(p, s)) == pytest.approx(1.0, abs=1e-12)
            assert all(float(torch.trapezoid(q, s2)) == pytest.approx(1.0, abs=1e-12) for s2, q in learned)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_default_middle_time_is_where_the_mean_error_peaks(runs):
    data = collect_overlay(gmm2d_runs(runs), n_line=51)
    curves = [json.loads((d / "results.json").read_text())["runs"]["pinn"]["eval"] for d in gmm2d_runs(runs)]
    t_grid = curves[0]["t_grid"]
    inband = [i for i, t in enumerate(t_grid) if t >= 0.05 - 1e-12]
    peak = max(inband, key=lambda i: sum(c["rel_err"][i] for c in curves))
    times = [d[0] for d in data.densities]
    expect = t_grid[peak] if t_grid[peak] < 1.0 else 0.5
    assert times == [0.001, expect, 1.0]


# ---------------------------------------------------------------------------------------------
# The loaded model is the evaluated one.
def test_load_run_model_gives_the_weights_that_were_evaluated(runs):
    """The score error of the loaded model, recomputed with evaluate_model's first draws,
    equals the stored curve (float32 model, float64 sums: 1e-5); the raw (non-EMA) weights of
    the same checkpoint do not (EMA 0.5 over 4 steps moves them by about one step)."""
    d = runs["g2_s1"]
    model, cfg = load_run_model(d / "pinn")
    assert cfg.seed == 1 and cfg.ema == 0.5
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    low = time_grid(cfg.t_min, 0.05, 6, Spacing.LOG)[:-1]
    grid = torch.cat([low, time_grid(0.05, 1.0, 20, Spacing.UNIFORM)])
    stored = json.loads((d / "results.json").read_text())["runs"]["pinn"]["eval"]["rel_err"]

    def curve(m):
        return score_error_curve(m, ds.score_fn(sde), sde, ds.sample, grid, n_points=EVAL.n_points,
                                 generator=torch.Generator().manual_seed(cfg.seed)).tolist()

    assert curve(model) == pytest.approx(stored, rel=1e-5)
    raw = build_model(cfg, ds, sde)
    raw.load_state_dict(torch.load(d / "pinn" / "checkpoint.pt", weights_only=True)["model"])
    raw.eval()
    assert max(abs(a / b - 1) for a, b in zip(curve(raw), stored)) > 1e-3


# ---------------------------------------------------------------------------------------------
# The density on a line.
@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(["gmm2d", "gmm8", "gmm1d"]), sde_name=st.sampled_from(["ve", "vp"]),
       t=st.floats(0.01, 1.0))
def test_line_density_of_the_exact_score_is_the_exact_slice(name, sde_name, t):
    """For the exact score the line integral reproduces the exact density on the line: the
    cumulative trapezoid rule errs by O(h^2), so doubling the points (h/2) divides the error by
    ~4 (the rule's order 2; checked where the error is above float64 round-off), and at 2001
    points it is below 1e-3 of the peak."""
    ds, sde = get_dataset(name), make_sde(sde_name)
    dl = density_line(ds, sde, t, n_ref=4000)
    errs = []
    for n in (1001, 2001):
        s, p = line_log_density(ds.score_fn(sde), dl, t, n, dtype=torch.float64)
        s2, p_true = true_line_density(ds, sde, dl, t, n)
        assert torch.equal(s, s2)
        errs.append(float((p - p_true).abs().max() / p_true.max()))
    assert errs[1] < 1e-3
    if errs[1] > 1e-9:
        assert 3.0 < errs[0] / errs[1] < 5.0


def test_gmm2d_slice_is_the_two_mode_mixture_with_the_data_weights():
    """gmm2d's slice through (-5,-5) and (5,5): 0.2 N(-5 sqrt2, s^2) + 0.8 N(5 sqrt2, s^2) on
    s = u.x, s^2 = 1 + v(t) (VE, a = 1), so the mass on s < 0 is 0.2 (up to the far tail)."""
    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    t = 0.3
    dl = density_line(ds, sde, t)
    assert torch.allclose(dl.direction, torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2))
    s, p = line_log_density(ds.score_fn(sde), dl, t, 4001, dtype=torch.float64)
    var = 1.0 + float(sde.marginal_var(torch.tensor([t], dtype=torch.float64))[0])
    m = 5 * math.sqrt(2)

    def normal(mu):
        return torch.exp(-(s - mu) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)

    expect = 0.2 * normal(-m) + 0.8 * normal(m)
    assert torch.allclose(p, expect / torch.trapezoid(expect, s), atol=1e-6)
    assert dl.split == pytest.approx(0.0, abs=1e-12)
    assert mass_below(s, p, dl.split) == pytest.approx(0.2, abs=1e-3)


def test_line_density_sees_a_wrong_score():
    """A score with the modes' weights swapped (0.8 / 0.2) gives the swapped slice, far from the
    true one: the line density is not blind to the weights the PINN gets wrong."""
    from scorefpe.data.mixtures import GaussianMixture

    ds, sde = get_dataset("gmm2d"), make_sde("ve")
    wrong = GaussianMixture(torch.tensor([0.8, 0.2], dtype=torch.float64), ds.truth.means, ds.truth.covariances)
    t = 0.3
    dl = density_line(ds, sde, t)
    s, p = line_log_density(wrong.score_fn(sde), dl, t, 2001, dtype=torch.float64)
    assert mass_below(s, p, dl.split) == pytest.approx(0.8, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Bad input: CauchyRunError in the library, exit 2 naming it at the CLI, nothing written.
def test_read_cauchy_run_refuses_what_is_not_a_finished_run(tmp_path, runs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CauchyRunError, match="no results.json"):
        read_cauchy_run(tmp_path / "empty")
    with pytest.raises(CauchyRunError, match="not a directory"):
        read_cauchy_run(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"config": {"dataset": "gmm2d"}, "runs": {}}')
    with pytest.raises(CauchyRunError, match="no evaluated 'pinn'"):
        read_cauchy_run(tmp_path / "bad")
    with pytest.raises(CauchyRunError, match="'dsm'"):
        read_cauchy_run(runs["g2_s0"], "dsm")  # trained without the baseline


def _invoke(args: list[str]):
    return CliRunner().invoke(main, ["cauchy-report", *args])


def test_cli_writes_the_figure_and_csv(runs, tmp_path):
    out = tmp_path / "new" / "rep"
    res = _invoke([*map(str, gmm2d_runs(runs)), "--times", "0.001,0.7,1", "--line-points", "101",
                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["seed_overlay.csv", "seed_overlay.png"]
    assert res.output.count("  seed ") == 3


@pytest.mark.parametrize("case", ["not-a-run", "missing", "mixed-datasets", "twice", "out-is-a-file",
                                  "time-outside", "no-dsm"])
def test_cli_bad_input_exits_2_names_it_and_writes_nothing(runs, tmp_path, case):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("not a run\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("a file\n")
    g2 = [str(p) for p in gmm2d_runs(runs)]
    out = str(tmp_path / "out")
    args, needle = {
        "not-a-run": ([g2[0], str(other), "--out", out], "notes"),
        "missing": ([g2[0], str(tmp_path / "nowhere"), "--out", out], "nowhere"),
        "mixed-datasets": ([*g2, str(runs["g1_s0"]), "--out", out], "gmm1d"),
        "twice": ([g2[0], g2[1], g2[0], "--out", out], "given twice"),
        "out-is-a-file": ([*g2, "--out", str(plain)], "plain.txt"),
        "time-outside": ([*g2, "--times", "0.5,1.5", "--out", out], "1.5"),
        "no-dsm": ([*g2, "--model", "dsm", "--out", out], "'dsm'"),
    }[case]
    before, before_runs = _tree(tmp_path), _tree(runs["g2_s0"].parent)
    res = _invoke(args)
    assert "Traceback" not in res.output
    assert res.exit_code == 2, (res.output, res.exception)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], res.output
    assert _tree(tmp_path) == before and _tree(runs["g2_s0"].parent) == before_runs
