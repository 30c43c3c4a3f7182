"""`scorefpe experiment lambda-sweep`: aggregation with known numbers, a tiny sweep (width 0.125,
2-step runs on random images, 2-point grids) that is resumed and extended, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scorefpe.experiments.table1 import TRAIN_MARKER
from scorefpe.experiments.lambda_sweep import (
    DIAG_JSON,
    RESULT_JSON,
    RESULT_MD,
    SWEEP_JSON,
    SweepConfig,
    aggregate_sweep,
    check_sweep_dir,
    lam_dir_name,
    plan_sweep,
    run_lambda_sweep,
)


def _rec(values, ses=None, t=(1e-4, 1e-2, 1.0)):
    ses = ses or [0.5] * len(values)
    curve = [{"t": tt, "mean": v, "se": s} for tt, v, s in zip(t, values, ses)]
    return {"curves": {"r_FP": curve, "r_DSM": curve, "jac_fro": curve}}


def test_aggregate_known_numbers():
    recs = {
        1e-3: [_rec([1e4, 1e2, 1.0]), _rec([1e6, 1e2, 1e2])],
        0.0: [_rec([100.0, -1.0, 10.0], ses=[2.0, 3.0, 4.0])],
    }
    agg = aggregate_sweep(recs)
    assert list(agg) == ["0", "0.001"]  # sorted by lambda
    e = agg["0.001"]["r_FP"]
    np.testing.assert_allclose(e["mean"], [(1e4 + 1e6) / 2, 1e2, 50.5])
    # se over seeds: std (ddof 1) / sqrt(2) = |a - b| / 2
    np.testing.assert_allclose(e["se"], [(1e6 - 1e4) / 2, 0.0, 49.5])
    # per seed mean_t log10: (4 + 2 + 0) / 3 = 2 and (6 + 2 + 2) / 3 = 10/3
    np.testing.assert_allclose(e["per_seed_time_avg_log10"], [2.0, 10 / 3])
    assert e["time_avg_log10"] == pytest.approx((2 + 10 / 3) / 2)
    assert e["time_avg_log10_se"] == pytest.approx(abs(10 / 3 - 2) / 2)
    assert e["n_nonpositive"] == 0
    b = agg["0"]["r_FP"]
    # one seed: the run's own standard errors; the point <= 0 is left out of the log average
    np.testing.assert_allclose(b["se"], [2.0, 3.0, 4.0])
    assert b["time_avg_log10"] == pytest.approx(1.5)
    assert math.isnan(b["time_avg_log10_se"])
    assert b["n_nonpositive"] == 1
    assert agg["0"]["n_seeds"] == 1 and agg["0.001"]["n_seeds"] == 2
    with pytest.raises(ValueError, match="different t grids"):
        aggregate_sweep({1.0: [_rec([1, 2, 3]), _rec([1, 2, 3], t=(1e-4, 1e-1, 1.0))]})


# ---------------------------------------------------------------------------- orchestration

_TRAIN = (("width", 0.125), ("batch_size", 8), ("checkpoint_every", 1), ("log_every", 1))


def _cfg(**kw) -> SweepConfig:
    base = dict(penalty="fp", lams=(1e-3, 1e-1), seeds=1, preset="tiny", epochs=1,
                extra_train=_TRAIN, n_points=2, n_t=2)
    base.update(kw)
    return SweepConfig(**base)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(16, 1, 28, 28, generator=g),
            "test_images": torch.rand(6, 1, 28, 28, generator=g)}


def _run(cfg, out, data):
    log: list[str] = []
    paths = run_lambda_sweep(cfg, out, images=data["images"], test_images=data["test_images"],
                             echo=log.append)
    return paths, log


def test_sweep_end_to_end_resume_and_extend(tmp_path, data):
    out = tmp_path / "sweep"
    cfg = _cfg()
    paths, log = _run(cfg, out, data)
    assert paths["png"].name == "lambda_sweep_fp.png"
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    for name in (SWEEP_JSON, RESULT_JSON, RESULT_MD):
        assert (out / name).is_file()
    dirs = [out / "baseline" / "none-s0", out / lam_dir_name(1e-3) / "fp-s0",
            out / lam_dir_name(0.1) / "fp-s0"]
    assert [d.parent.name for d in dirs] == ["baseline", "lam_0.001", "lam_0.1"]
    for d in dirs:
        assert json.loads((d / TRAIN_MARKER).read_text())["step"] == 2
        assert (d / DIAG_JSON).is_file()
    cfgs = [json.loads((d / "config.json").read_text())["penalty"] for d in dirs]
    assert [(c["penalty"], c["lam"]) for c in cfgs] == [("none", 0.0), ("fp", 1e-3), ("fp", 0.1)]
    assert sum("training done (fresh)" in m for m in log) == 3
    # One seed: the aggregated curve is the run's own curve, number for number.
    res = json.loads((out / RESULT_JSON).read_text())["lambdas"]
    assert set(res) == {"0", "0.001", "0.1"}
    own = json.loads((dirs[1] / DIAG_JSON).read_text())["curves"]["r_FP"]
    assert res["0.001"]["r_FP"]["mean"] == [p["mean"] for p in own]
    assert res["0.001"]["r_FP"]["se"] == [p["se"] for p in own]
    assert "| 0.1 | 1 |" in (out / RESULT_MD).read_text()

    # Second call: nothing trained or recomputed, files untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")
              if p.name in ("checkpoint.pt", DIAG_JSON)}
    _, log2 = _run(cfg, out, data)
    assert sum("training finished earlier, reused" in m for m in log2) == 3
    assert sum("diagnostics with these settings exist, reused" in m for m in log2) == 3
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # A stale diagnostics file (another training step) is recomputed, only that one.
    p = dirs[2] / DIAG_JSON
    rec = json.loads(p.read_text())
    rec["step"] = 1
    p.write_text(json.dumps(rec))
    _, log3 = _run(cfg, out, data)
    assert sum(m.endswith("diagnostics (2 t x 2 points)") for m in log3) == 1

    # One more lambda: only its run is trained.
    _, log4 = _run(_cfg(lams=(1e-3, 1e-2, 1e-1)), out, data)
    assert sum("training done (fresh)" in m for m in log4) == 1
    assert any("fp lambda 0.01 seed 0: training done" in m for m in log4)
    assert set(json.loads((out / RESULT_JSON).read_text())["lambdas"]) == {
        "0", "0.001", "0.01", "0.1"}

    # Other fixed settings in the same directory: refused.
    with pytest.raises(ValueError, match="other settings.*n_points"):
        _run(_cfg(n_points=3), out, data)


# ---------------------------------------------------------------------------- bad input


def test_config_bad_input():
    with pytest.raises(ValueError, match="'none'.*'fp'"):
        SweepConfig(penalty="none")
    with pytest.raises(ValueError, match="'huge'"):
        SweepConfig(preset="huge")
    with pytest.raises(ValueError, match="at least one"):
        SweepConfig(lams=())
    with pytest.raises(ValueError, match="positive and finite"):
        SweepConfig(lams=(1e-3, 0.0))
    with pytest.raises(ValueError, match="distinct"):
        SweepConfig(lams=(1e-3, 0.001))
    with pytest.raises(ValueError, match="seeds"):
        SweepConfig(seeds=0)
    with pytest.raises(ValueError, match="n_t"):
        SweepConfig(n_t=1)
    assert SweepConfig(lams=(1e-1, 1e-3)).lams == (1e-3, 1e-1)


def test_check_sweep_dir(tmp_path):
    check_sweep_dir(_cfg(), tmp_path / "new")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        check_sweep_dir(_cfg(), tmp_path / "f")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a lambda-sweep directory"):
        check_sweep_dir(_cfg(), tmp_path / "other")


@pytest.mark.parametrize("args, msg", [
    (["--lams", "1e-3,abc"], "comma-separated numbers"),
    (["--lams", "1e-3,0"], "positive and finite"),
    (["--penalty", "none"], "none"),
    (["--seeds", "0"], "must be > 0"),
    (["--preset", "huge"], "huge"),
    (["--n-t", "1"], "n-t"),
])
def test_cli_bad_input_exits_2(tmp_path, args, msg):
    from scorefpe.cli.main import main

    out = tmp_path / "sweep"
    res = CliRunner().invoke(main, ["experiment", "lambda-sweep", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert msg in res.output
    assert not out.exists()


def test_cli_refuses_foreign_directory(tmp_path):
    from scorefpe.cli.main import main

    (tmp_path / "x.txt").write_text("data")
    res = CliRunner().invoke(main, ["experiment", "lambda-sweep", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a lambda-sweep directory" in res.output


def test_baseline_gets_the_penalised_runs_learning_rate(tmp_path):
    """The presets train fp at lr 1e-3 and none at 5e-4; the sweep's lambda -> 0 reference must
    differ from the penalised runs only in the penalty, so the baseline takes their lr (also when
    extra_train sets one)."""
    runs = plan_sweep(SweepConfig(penalty="fp", lams=(1e-3,), seeds=1, preset="smoke"), tmp_path)
    (base,) = [r for r in runs if r.lam == 0.0]
    (pen,) = [r for r in runs if r.lam > 0]
    assert base.spec.loss == "none" and pen.spec.run.train.lr == 1e-3
    assert base.spec.run.train.lr == pen.spec.run.train.lr
    runs = plan_sweep(SweepConfig(penalty="jac", lams=(1e-3,), seeds=1, preset="smoke",
                                  extra_train=(("lr", 2e-4),)), tmp_path)
    assert {r.spec.run.train.lr for r in runs} == {2e-4}
