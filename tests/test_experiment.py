"""`scorefpe experiment table1`: aggregation with known numbers, skip/resume orchestration on
2-step runs with random images, bad input."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scorefpe.experiments.table1 import (
    EXPERIMENT_JSON,
    LOSSES,
    TRAIN_MARKER,
    Table1Config,
    aggregate,
    check_experiment_dir,
    eval_metrics,
    plan_runs,
    run_table1,
    table_csv,
    table_markdown,
    _train_record,
    write_tables,
)


def _eval_rec(fid, dens, cov, ent, bpd, tpe):
    return {"fid": fid, "density": dens, "coverage": cov, "entropy_nats": ent,
            "nll": None if bpd is None else {"bpd": bpd, "se": 0.1, "n": 4},
            "time_per_epoch": {"mean_s": tpe}}


def test_aggregate_mean_std_known_numbers():
    rows = {
        "none": [eval_metrics(_eval_rec(10.0, 0.5, 0.1, 2.0, 7.0, 1.0)),
                 eval_metrics(_eval_rec(20.0, 0.7, 0.3, 2.2, 9.0, 3.0)),
                 eval_metrics(_eval_rec(30.0, 0.9, 0.5, 2.1, None, 5.0))],
        "fp": [eval_metrics(_eval_rec(4.0, 1.0, 0.2, 2.3, 6.5, 8.0))],
    }
    agg = aggregate(rows)
    a = agg["none"]
    assert a["fid"]["mean"] == pytest.approx(20.0, abs=1e-12)
    assert a["fid"]["std"] == pytest.approx(10.0, abs=1e-12)  # ddof = 1
    assert a["density"]["std"] == pytest.approx(0.2, abs=1e-12)
    assert a["time_per_epoch_s"]["mean"] == pytest.approx(3.0, abs=1e-12)
    # NLL skipped on one seed: left out, not counted as 0
    assert a["nll_bpd"]["n"] == 2
    assert a["nll_bpd"]["mean"] == pytest.approx(8.0, abs=1e-12)
    assert a["nll_bpd"]["std"] == pytest.approx(math.sqrt(2.0), abs=1e-12)
    assert agg["fp"]["fid"] == {"mean": 4.0, "std": None, "n": 1}

    md = table_markdown(agg, 3)
    assert "| none | 3/3 | 20 ± 10 | 0.7 ± 0.2 |" in md
    assert "| fp | 1/3 | 4 |" in md
    # time per epoch against the baseline's mean: fp 8 s, none 3 s
    assert md.splitlines()[2].endswith("| 1x |") and md.splitlines()[3].endswith("| 2.67x |")
    assert table_markdown({"fp": agg["fp"]}, 3).splitlines()[2].endswith("| n/a |")
    rows_csv = list(csv.DictReader(io.StringIO(table_csv(agg))))
    assert [r["loss"] for r in rows_csv] == ["none", "fp"]
    assert float(rows_csv[0]["fid_std"]) == pytest.approx(10.0)
    assert rows_csv[1]["fid_std"] == ""


def _finished(spec, rec):
    """A run directory as train_one and evaluate_run leave it: the training marker of the
    planned settings and an eval.json."""
    (spec.run_dir / TRAIN_MARKER).write_text(json.dumps({"settings": _train_record(spec)}))
    (spec.run_dir / "eval.json").write_text(json.dumps(rec))


def test_tables_leave_out_runs_trained_under_other_settings(tmp_path):
    """A run whose training marker names other settings (here: no gradient clipping, the cpu
    preset before it clipped) does not enter the table, whose header names the clipping."""
    dc = dataclasses
    cfg = Table1Config(preset="cpu", seeds=2, losses=("none",))
    s0, s1 = plan_runs(cfg, tmp_path)
    for s in (s0, s1):
        s.run_dir.mkdir()
    _finished(s0, _eval_rec(10.0, 0.5, 0.1, 2.0, 7.0, 1.0))
    old = dc.replace(s1, run=dc.replace(s1.run, train=dc.replace(s1.run.train, grad_clip=None)))
    _finished(old, _eval_rec(99.0, 0.5, 0.1, 2.0, 7.0, 1.0))
    row = next(csv.DictReader(io.StringIO(write_tables(cfg, tmp_path)["csv"].read_text())))
    assert row["fid_n"] == "1" and float(row["fid_mean"]) == 10.0


def test_time_column_is_the_median_epoch_of_the_training_log(tmp_path):
    """The time column comes from metrics.jsonl (median over complete epochs: one epoch slowed
    by other work does not move it), not from eval.json's mean."""
    cfg = Table1Config(preset="tiny", seeds=1, losses=("none",))
    (s,) = plan_runs(cfg, tmp_path)
    s.run_dir.mkdir()
    _finished(s, _eval_rec(10.0, 0.5, 0.1, 2.0, 7.0, 99.0))
    (s.run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "epoch", "complete": True, "time_s": t, "images_per_s": 1.0}) + "\n"
        for t in (2.0, 4.0, 100.0)))
    row = next(csv.DictReader(io.StringIO(write_tables(cfg, tmp_path)["csv"].read_text())))
    assert float(row["time_per_epoch_s_mean"]) == 4.0


def test_sample_figure_shows_seed_0_of_each_loss(tmp_path):
    """table1_samples.png: one panel per loss with seed-0 samples, linked from table1.md; none
    written (and no link) while no run has samples."""
    from PIL import Image

    cfg = Table1Config(preset="tiny", seeds=2, losses=("none", "sn"))
    assert "table1_samples.png" not in write_tables(cfg, tmp_path)["md"].read_text()
    assert not (tmp_path / "table1_samples.png").exists()
    for s in plan_runs(cfg, tmp_path):
        s.run_dir.mkdir(exist_ok=True)
        _finished(s, _eval_rec(10.0, 0.5, 0.1, 2.0, 7.0, 1.0))
        if s.seed == 0:
            np.save(s.run_dir / "samples.npy", np.full((40, 1, 28, 28), 0.5, np.float32))
    paths = write_tables(cfg, tmp_path)
    assert "](table1_samples.png)" in paths["md"].read_text()
    w1, _ = Image.open(paths["samples"]).size
    (tmp_path / "sn-s0" / "samples.npy").unlink()
    w2, _ = Image.open(write_tables(cfg, tmp_path)["samples"]).size
    assert w2 < w1  # one panel fewer


def test_write_tables_reads_every_planned_run(tmp_path):
    cfg = Table1Config(preset="tiny", seeds=2)
    specs = plan_runs(cfg, tmp_path)
    assert [(s.loss, s.seed) for s in specs] == [(x, k) for x in LOSSES for k in (0, 1)]
    assert specs[0].run.penalty.lam == 0.0 and specs[2].run.penalty.lam == pytest.approx(1e-3)
    assert {s.run.train.seed for s in specs} == {0, 1}
    for i, s in enumerate(specs):
        s.run_dir.mkdir()
        fid = 100.0 * (1 + LOSSES.index(s.loss)) + 2.0 * s.seed  # seeds differ by 2
        _finished(s, _eval_rec(fid, 0.5, 0.1, 2.0, 7.0, 1.0))
    paths = write_tables(cfg, tmp_path)
    rows = {r["loss"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    for j, loss in enumerate(LOSSES):
        assert float(rows[loss]["fid_mean"]) == pytest.approx(100.0 * (1 + j) + 1.0)
        assert float(rows[loss]["fid_std"]) == pytest.approx(math.sqrt(2.0))
    assert "| div | 0.001 | 2/2 | 501 ± 1.4 |" in paths["md"].read_text()


# ---------------------------------------------------------------------------- orchestration


def _cfg(**kw) -> Table1Config:
    # 16 random images, batch 8: one epoch is 2 steps. No NLL, a 2-point diagnostics grid.
    base = dict(preset="tiny", seeds=1, epochs=1, n_samples=8, steps=2, losses=("none", "sn"),
                extra_train=(("batch_size", 8), ("checkpoint_every", 1), ("log_every", 1)),
                extra_eval=(("nll_n", 0), ("diag_points", 2), ("diag_n_t", 2)))
    base.update(kw)
    return Table1Config(**base)


@pytest.fixture(scope="module")
def data():
    from scorefpe.metrics.lenet import LeNet

    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(16, 1, 28, 28, generator=g),
            "reference": torch.rand(24, 1, 28, 28, generator=g),
            "lenet": LeNet(0).eval()}


def _run(cfg, out, data):
    log: list[str] = []
    paths = run_table1(cfg, out, images=data["images"], reference=data["reference"],
                       lenet=data["lenet"], echo=log.append)
    return paths, log


def test_end_to_end_then_everything_skipped(tmp_path, data):
    out = tmp_path / "exp"
    cfg = _cfg()
    paths, log = _run(cfg, out, data)
    for key in ("md", "csv", "report"):
        assert paths[key].is_file()
    assert (out / EXPERIMENT_JSON).is_file()
    rows = {r["loss"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    assert set(rows) == {"none", "sn"}
    for loss in ("none", "sn"):
        rec = json.loads((out / f"{loss}-s0" / "eval.json").read_text())
        # the table holds exactly the eval.json numbers (one seed: mean = value, no std)
        assert float(rows[loss]["fid_mean"]) == pytest.approx(rec["fid"], rel=1e-12)
        assert rows[loss]["fid_std"] == ""
        assert rows[loss]["nll_bpd_n"] == "0"
        assert json.loads((out / f"{loss}-s0" / TRAIN_MARKER).read_text())["step"] == 2
    assert sum("training done (fresh)" in m for m in log) == 2
    assert sum(m.endswith("evaluating") for m in log) == 2

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")
              if p.name in ("checkpoint.pt", "eval.json", "samples.npy")}
    _, log2 = _run(cfg, out, data)
    assert sum("training finished earlier, reused" in m for m in log2) == 2
    assert sum("eval.json with these settings exists, reused" in m for m in log2) == 2
    assert not any("training done" in m or m.endswith("evaluating") for m in log2)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # More epochs: the finished runs resume (not restart) and are evaluated again.
    _, log3 = _run(_cfg(epochs=2), out, data)
    assert sum("training done (resumed)" in m for m in log3) == 2
    assert sum(m.endswith("evaluating") for m in log3) == 2
    assert json.loads((out / "sn-s0" / TRAIN_MARKER).read_text())["step"] == 4

    # Fewer epochs than a finished run: refused, nothing retrained or deleted.
    with pytest.raises(ValueError, match="trained for 2 epochs, more than the 1"):
        _run(_cfg(epochs=1), out, data)
    assert (out / "none-s0" / "eval.json").is_file()


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path, data):
    from scorefpe.training import train_mnist

    cfg = _cfg(losses=("sn",))
    # interrupted: 1 of the 2 steps done, checkpoint written, no marker, no eval
    spec = plan_runs(cfg, tmp_path / "a")[0]
    cut = dataclasses.replace(spec.run, train=dataclasses.replace(spec.run.train, max_steps=1))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / EXPERIMENT_JSON).write_text(json.dumps(cfg.to_dict()))
    assert not train_mnist(cut, spec.run_dir, images=data["images"]).finished
    _, log = _run(cfg, tmp_path / "a", data)
    assert any("training done (resumed)" in m for m in log)
    _run(cfg, tmp_path / "b", data)  # uninterrupted
    sa = torch.load(tmp_path / "a" / "sn-s0" / "checkpoint.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "sn-s0" / "checkpoint.pt", weights_only=False)
    assert sa["step"] == sb["step"] == 2
    for k in sb["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    fa = json.loads((tmp_path / "a" / "sn-s0" / "eval.json").read_text())["fid"]
    fb = json.loads((tmp_path / "b" / "sn-s0" / "eval.json").read_text())["fid"]
    assert fa == pytest.approx(fb, rel=1e-9)


def test_stale_eval_with_other_settings_is_redone(tmp_path, data):
    out = tmp_path / "exp"
    cfg = _cfg(losses=("none",))
    _run(cfg, out, data)
    p = out / "none-s0" / "eval.json"
    rec = json.loads(p.read_text())
    rec["config"]["k"] = 3
    p.write_text(json.dumps(rec))
    _, log = _run(cfg, out, data)
    assert any(m.endswith("evaluating") for m in log)
    assert json.loads(p.read_text())["config"]["k"] == 5


# ---------------------------------------------------------------------------- bad input


def test_library_bad_input(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        Table1Config(seeds=0)
    with pytest.raises(ValueError, match="epochs"):
        Table1Config(epochs=-1)
    with pytest.raises(ValueError, match="'huge'.*smoke"):
        Table1Config(preset="huge")
    with pytest.raises(ValueError, match="'dsm'"):
        Table1Config(losses=("dsm",))
    (tmp_path / "x.txt").write_text("data")
    with pytest.raises(ValueError, match="not a table1 experiment"):
        check_experiment_dir(tmp_path)
    check_experiment_dir(tmp_path / "new")  # missing: fine
    out = tmp_path / "exp"
    out.mkdir()
    (out / EXPERIMENT_JSON).write_text(json.dumps(_cfg().to_dict()))
    with pytest.raises(ValueError, match="other settings.*lam"):
        run_table1(_cfg(lam=0.5), out)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seeds", "0"], "--seeds"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "-3"], "--epochs"),
        (["--preset", "huge"], "'huge'"),
        (["--n-samples", "0"], "--n-samples"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, args, needle):
    from scorefpe.cli.main import main

    out = tmp_path / "exp"
    res = CliRunner().invoke(main, ["experiment", "table1", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not out.exists()


def test_cli_out_not_an_experiment_dir(tmp_path):
    from scorefpe.cli.main import main

    (tmp_path / "notes.txt").write_text("mine")
    res = CliRunner().invoke(main, ["experiment", "table1", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert str(tmp_path) in res.output and "not a table1 experiment" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_out_is_a_file(tmp_path):
    from scorefpe.cli.main import main

    f = tmp_path / "table.txt"
    f.write_text("mine")
    res = CliRunner().invoke(main, ["experiment", "table1", "--out", str(f), "--preset", "tiny"])
    assert res.exit_code == 2
    assert "not a directory" in res.output and str(f) in res.output
    assert f.read_text() == "mine"


# ---------------------------------------------------------------------------- lambdas per penalty


def test_parse_lams_and_resolution():
    from scorefpe.experiments.table1 import parse_lams

    assert parse_lams("2e-3") == (2e-3, ())
    assert parse_lams("fp=1e-6, sn=1e-2") == (None, (("fp", 1e-6), ("sn", 1e-2)))
    for bad, needle in [("dsm=1", "'dsm'"), ("none=1", "'none'"), ("fp=0", "positive"),
                        ("fp=-1e-3", "positive"), ("fp=inf", "finite"), ("nan", "finite"),
                        ("fp=abc", "number"), ("fp=1,fp=2", "twice"), ("fp", "number")]:
        with pytest.raises(ValueError, match=needle):
            parse_lams(bad)
    # named > one number for all > the preset's
    cfg = Table1Config(preset="tiny", lam=5e-3, lams=(("sn", 1e-2),))
    assert cfg.resolved_lams == {"none": 0.0, "fp": 5e-3, "sn": 1e-2, "jac": 5e-3, "div": 5e-3}
    cfg = Table1Config(preset="cpu", lams=(("jac", 3e-4),))
    assert cfg.lam_of("jac") == 3e-4 and cfg.lam_of("none") == 0.0
    specs = {s.loss: s for s in plan_runs(cfg, "x") if s.seed == 0}
    assert specs["jac"].run.penalty.lam == 3e-4 and specs["none"].run.penalty.lam == 0.0
    assert specs["fp"].run.penalty.lam == dict(cfg.spec.lams)["fp"]
    with pytest.raises(ValueError, match="'dsm'"):
        Table1Config(lams=(("dsm", 1.0),))


@pytest.mark.parametrize("option, spec, needle", [
    ("--lam", "fp=1e-6,foo=1", "'foo'"), ("--lam", "sn=0", "positive"),
    ("--lam", "jac=nan", "finite"), ("--lam", "div=-2", "positive"), ("--lam", "inf", "finite"),
    ("--lam", "fp=x", "number"),
    ("--sub-batch", "fp=0", "fp"), ("--sub-batch", "foo=8", "'foo'"), ("--sub-batch", "fp=x", "'x'"),
    ("--losses", "foo", "'foo'"), ("--losses", "none,none", "twice"), ("--losses", ",", "unknown"),
    ("--grad-clip", "-1", "'-1'"), ("--grad-clip", "nan", "'nan'")])
def test_cli_bad_per_loss_option_exit_2(tmp_path, option, spec, needle):
    from scorefpe.cli.main import main

    out = tmp_path / "exp"
    res = CliRunner().invoke(main, ["experiment", "table1", "--out", str(out), option, spec])
    assert res.exit_code == 2, res.output
    assert option in res.output and needle in res.output and "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [(["--width", "0"], "--width"),
                                          (["--width", "nan"], "--width"),
                                          (["--n-train", "0"], "--n-train")])
def test_cli_bad_width_ntrain_exit_2(tmp_path, args, needle):
    from scorefpe.cli.main import main

    out = tmp_path / "exp"
    res = CliRunner().invoke(main, ["experiment", "table1", "--out", str(out), *args])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not out.exists()


# ---------------------------------------------------------------------------- significance


def test_significance_columns_on_a_constructed_experiment(tmp_path):
    """3 seeds with known per-seed FIDs: the columns hold the closed-form paired statistics.

    Baseline FIDs vary by seed (10, 50, 30); fp = baseline + (1, 2, 3): mean 2, sd 1,
    t = 2 sqrt 3, p_t = 1 - t / sqrt(2 + t^2) (t CDF with 2 df); sn = baseline + (1, -1, 2):
    mean 2/3, sd sqrt(7/3), t = 2 / sqrt 7, p_t = 1 - 2 / sqrt 18, sign-flip p = 6/8. Paired by
    seed: shuffling the seeds of one arm would change every number."""
    cfg = Table1Config(preset="tiny", seeds=3, losses=("none", "fp", "sn"),
                       lams=(("fp", 1e-6), ("sn", 1e-2)))
    base = {0: 10.0, 1: 50.0, 2: 30.0}
    shift = {"none": (0.0, 0.0, 0.0), "fp": (1.0, 2.0, 3.0), "sn": (1.0, -1.0, 2.0)}
    for s in plan_runs(cfg, tmp_path):
        s.run_dir.mkdir()
        fid = base[s.seed] + shift[s.loss][s.seed]
        _finished(s, _eval_rec(fid, 0.5, 0.1, 2.0, None, 1.0))
    paths = write_tables(cfg, tmp_path)
    rows = {r["loss"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    t = 2.0 * math.sqrt(3.0)
    assert float(rows["fp"]["fid_diff"]) == pytest.approx(2.0, abs=1e-12)
    assert float(rows["fp"]["fid_p_t"]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert float(rows["fp"]["fid_p_signflip"]) == pytest.approx(0.25)
    assert float(rows["sn"]["fid_diff"]) == pytest.approx(2.0 / 3.0, abs=1e-12)
    assert float(rows["sn"]["fid_p_t"]) == pytest.approx(1 - 2 / math.sqrt(18), rel=1e-9)
    assert float(rows["sn"]["fid_p_signflip"]) == pytest.approx(6 / 8)
    assert float(rows["fp"]["fid_ci_low"]) >= 1.0 - 1e-12
    assert float(rows["fp"]["fid_ci_high"]) <= 3.0 + 1e-12
    # identical densities: zero differences, t undefined, sign-flip p = 1
    assert float(rows["fp"]["density_diff"]) == 0.0
    assert float(rows["fp"]["density_p_signflip"]) == 1.0
    assert rows["none"]["fid_diff"] == "" and rows["fp"]["nll_bpd_diff"] == ""  # no NLL values
    assert float(rows["fp"]["lam"]) == 1e-6 and float(rows["none"]["lam"]) == 0.0
    md = paths["md"].read_text()
    assert "| fp | 1e-06 | 3/3 |" in md and "| sn | 0.01 | 3/3 |" in md
    assert "paired t-test" in md and "sign-flip" in md
    assert "cannot go below p = 2/2^3 = 0.25" in md
    assert "| fp | 1e-06 | +2 (0.074, 0.25) |" in md
    assert "n/a (< 2 paired seeds)" in md  # NLL column


def test_significance_pairs_only_common_seeds():
    from scorefpe.experiments.table1 import significance

    per_seed = {"none": {0: {"fid": 10.0}, 1: {"fid": 20.0}, 2: {"fid": 40.0}},
                "fp": {0: {"fid": 12.0}, 2: {"fid": 44.0}},  # seed 1 missing
                "sn": {1: {"fid": 0.0}}}
    sig = significance(per_seed)
    assert sig["fp"]["fid"].n == 2 and sig["fp"]["fid"].mean_diff == pytest.approx(3.0)
    assert sig["sn"]["fid"] is None and sig["fp"]["density"] is None
    assert significance({"fp": {0: {"fid": 1.0}}}) == {}


# ---------------------------------------------------------------------------- driver


def test_each_run_written_before_the_next_starts(tmp_path, data):
    """When run 2 starts training, run 1's eval.json and a table holding it are on disk; the
    progress lines count runs and give an ETA."""
    out = tmp_path / "exp"
    seen: dict[str, object] = {}

    def echo(m: str) -> None:
        log.append(m)
        if m.startswith("[2/2] sn seed 0: training ("):
            seen["eval"] = (out / "none-s0" / "eval.json").is_file()
            rows = list(csv.DictReader(io.StringIO((out / "table1.csv").read_text())))
            seen["table"] = {r["loss"]: r["fid_n"] for r in rows}

    log: list[str] = []
    run_table1(_cfg(), out, images=data["images"], reference=data["reference"],
               lenet=data["lenet"], echo=echo)
    assert seen == {"eval": True, "table": {"none": "1", "sn": "0"}}
    assert any("1/2 runs done, 1 left, ETA" in m for m in log)
    assert any("2/2 runs done, 0 left, ETA 0 s" in m for m in log)


def test_progress_bar_on_stderr(tmp_path, data, capsys):
    out = tmp_path / "exp"
    run_table1(_cfg(losses=("none",)), out, images=data["images"], reference=data["reference"],
               lenet=data["lenet"], progress=True)
    err = capsys.readouterr().err
    assert "table1 runs" in err and "1/1" in err and "step" in err


def test_cpu_preset_code_path_trains_a_tiny_model(tmp_path, data):
    """The cpu preset's code path (its training preset, learning rates, EMA, evaluation
    config), shortened: 16 images, batch 8, one epoch = 2 steps."""
    from scorefpe.training import mnist_run
    from scorefpe.training.mnist_unet import PRESETS

    cpu = PRESETS["cpu"]
    run = mnist_run("cpu", penalty="fp", lam=1e-3)
    assert run.n_train is None and run.model.width == cpu["width"]
    assert run.train.lr == cpu["lr_fp"] and run.train.ema_decay == cpu["ema_decay"]
    assert mnist_run("cpu").train.lr == cpu["lr"]
    cfg = Table1Config(preset="cpu", seeds=1, epochs=1, n_samples=8, steps=2,
                       losses=("none", "jac"), lams=(("jac", 1e-4),),
                       extra_train=(("batch_size", 8), ("checkpoint_every", 1),
                                    ("log_every", 1)),
                       extra_eval=(("nll_n", 0), ("diag_points", 2), ("diag_n_t", 2)))
    out = tmp_path / "cpu"
    paths, log = _run(cfg, out, data)
    for loss in ("none", "jac"):
        d = out / f"{loss}-s0"
        saved = json.loads((d / "config.json").read_text())
        assert saved["preset"] == "cpu" and saved["model"]["width"] == cpu["width"]
        assert json.loads((d / TRAIN_MARKER).read_text())["step"] == 2
        rec = json.loads((d / "eval.json").read_text())
        assert math.isfinite(rec["fid"])
    assert json.loads((out / "jac-s0" / "config.json").read_text())["penalty"]["lam"] == 1e-4
    assert "| jac | 0.0001 | 1/1 |" in paths["md"].read_text()


# ---------------------------------------------------------------------- sub-batch per penalty


def test_parse_sub_batches_and_resolution(tmp_path):
    from scorefpe.experiments.table1 import parse_sub_batches

    assert parse_sub_batches("fp=8") == (("fp", 8),)
    assert parse_sub_batches("fp=all, div=16") == (("fp", None), ("div", 16))
    for bad, needle in [("dsm=8", "'dsm'"), ("fp=0", "positive integer"), ("fp=1.5", "'1.5'"),
                        ("fp=8,fp=4", "twice"), ("fp", "name=k"), (",", "name=k")]:
        with pytest.raises(ValueError, match=needle):
            parse_sub_batches(bad)
    # The cpu preset estimates fp on 8 samples, the others on the batch; an explicit spec
    # replaces the preset's (a penalty it does not name uses the whole batch).
    cpu = {s.loss: s.run.penalty.sub_batch for s in plan_runs(Table1Config(preset="cpu"), "x")}
    assert cpu == {"none": None, "fp": 8, "sn": None, "jac": None, "div": None}
    given = Table1Config(preset="cpu", sub_batches=(("jac", 16),))
    got = {s.loss: s.run.penalty.sub_batch for s in plan_runs(given, "x")}
    assert got == {"none": None, "fp": None, "sn": None, "jac": 16, "div": None}
    assert given.to_dict()["sub_batches"] == {"jac": 16}
    assert Table1Config(preset="tiny").to_dict()["sub_batches"] == {}
    md = write_tables(Table1Config(preset="cpu"), tmp_path)["md"].read_text()
    assert "fp on 8 of 64 samples per batch" in md
    assert "sub-batch" not in write_tables(Table1Config(preset="tiny"), tmp_path / "t")["md"].read_text()
    with pytest.raises(ValueError, match="sub-batch of fp"):
        Table1Config(sub_batches=(("fp", 0),))


def test_grad_clip_reaches_every_run_and_the_table_header(tmp_path, monkeypatch):
    """The cpu preset clips every loss at 1000; --grad-clip replaces it for all five (inf: none),
    and the table's training line says which."""
    import math

    from click.testing import CliRunner

    from scorefpe.cli.main import main

    clip = {s.run.train.grad_clip for s in plan_runs(Table1Config(preset="cpu"), "x")}
    assert clip == {1000.0}
    off = Table1Config(preset="cpu", extra_train=(("grad_clip", math.inf),))
    assert {s.run.train.grad_clip for s in plan_runs(off, "x")} == {None}
    assert "global gradient norm clipped at 1000;" in write_tables(
        Table1Config(preset="cpu"), tmp_path / "a")["md"].read_text()
    assert "no gradient clipping;" in write_tables(off, tmp_path / "b")["md"].read_text()
    seen = []

    def fake_run(cfg, out, **kw):
        seen.append(cfg)
        out.mkdir(parents=True)
        (out / "table1.md").write_text("table")
        return {"md": out / "table1.md"}

    monkeypatch.setattr("scorefpe.experiments.table1.run_table1",
                        fake_run)
    for arg, want in (("2.5", 2.5), ("inf", None)):
        res = CliRunner().invoke(main, ["experiment", "table1", "--preset", "cpu", "--out",
                                        str(tmp_path / f"c{arg}"), "--grad-clip", arg])
        assert res.exit_code == 0, res.output
        assert {s.run.train.grad_clip for s in plan_runs(seen[-1], "x")} == {want}


def test_changed_sub_batch_refuses_the_old_experiment_dir(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    old = Table1Config(preset="cpu").to_dict()
    (out / EXPERIMENT_JSON).write_text(json.dumps(old))
    with pytest.raises(ValueError, match="sub_batches"):
        run_table1(Table1Config(preset="cpu", sub_batches=(("fp", 16),)), out)


# ------------------------------------------------------------- one directory, several calls


def test_disjoint_only_calls_share_a_directory(tmp_path, data):
    """Two calls with only=("none",) and only=("sn",) on one directory: each trains and
    evaluates its own loss alone, and the table after the second lists both, exactly as one
    call over both would."""
    out = tmp_path / "exp"
    _, log1 = _run(dataclasses.replace(_cfg(), only=("sn",)), out, data)
    assert (out / "sn-s0" / "eval.json").is_file() and not (out / "none-s0").exists()
    assert not any("none seed" in m for m in log1)
    rows1 = {r["loss"]: r for r in csv.DictReader(io.StringIO((out / "table1.csv").read_text()))}
    assert rows1["none"]["fid_n"] == "0" and rows1["sn"]["fid_n"] == "1"
    paths, log2 = _run(dataclasses.replace(_cfg(), only=("none",)), out, data)
    assert not any("sn seed" in m for m in log2)
    rows = {r["loss"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    for loss in ("none", "sn"):
        rec = json.loads((out / f"{loss}-s0" / "eval.json").read_text())
        assert float(rows[loss]["fid_mean"]) == pytest.approx(rec["fid"], rel=1e-12)
    whole = tmp_path / "whole"
    _run(_cfg(), whole, data)
    for loss in ("none", "sn"):
        a = json.loads((out / f"{loss}-s0" / "eval.json").read_text())["fid"]
        b = json.loads((whole / f"{loss}-s0" / "eval.json").read_text())["fid"]
        assert a == b  # deterministic CPU runs: the split changes nothing
    with pytest.raises(ValueError, match="not in the experiment"):
        dataclasses.replace(_cfg(), only=("jac",))
