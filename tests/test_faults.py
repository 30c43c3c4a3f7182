"""Faults and recovery: interrupted saves, killed trainings, a full disk, a diverging or failing
run, stale files; the shared CLI options (threads, old spellings)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scorefpe.cli.main import main

import scorefpe._util as util
import scorefpe.training.checkpoint as ckpt_mod
from scorefpe.training.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _state(v: float) -> dict:
    return {"step": int(v), "model": {"w": torch.full((64, 64), v)}}


# ---------------------------------------------------------------------------------------------
# Atomic checkpoints
def test_a_save_interrupted_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1.0))
    good = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, fh):  # write the first half of the new file, then fail
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((64, 64), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1.0))
    good = path.read_bytes()

    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.os, "fsync", enospc)
    with pytest.raises(OSError):
        save_checkpoint(path, _state(2.0))
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_the_temporary_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    path = tmp_path / "checkpoint.pt"
    # What `atomic_output` leaves when its process is killed between mkstemp and os.replace.
    stale = tmp_path / ".checkpoint.k1ll3d.pt"
    stale.write_bytes(b"PK\x03\x04 half a zip")
    keep = [tmp_path / "checkpoint.pt.bak", tmp_path / ".config.x1.json", tmp_path / "metrics.jsonl"]
    for k in keep:
        k.write_text("x")
    save_checkpoint(path, _state(3.0))
    assert not stale.exists()
    assert all(k.exists() for k in keep)
    assert load_checkpoint(path)["step"] == 3


# ---------------------------------------------------------------------------------------------
# train synthetic: periodic checkpoints, exact resume, no stale metrics
SYN = ["train", "synthetic", "--dataset", "gmm2d", "--steps", "30", "--batch-size", "32",
       "--hidden", "16", "--depth", "2", "--checkpoint-every", "10"]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert sa["step"] == sb["step"]
    for part in ("model", "ema"):
        flat_a = _flatten(sa[part])
        flat_b = _flatten(sb[part])
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]), f"{part}.{k} differs"


def _flatten(obj, prefix="") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {}


def test_train_synthetic_stopped_and_resumed_equals_uninterrupted(tmp_path):
    run = CliRunner()
    a, b = tmp_path / "a", tmp_path / "b"
    r = run.invoke(main, [*SYN, "--out", str(a)])
    assert r.exit_code == 0, r.output
    r = run.invoke(main, [*SYN, "--max-steps", "13", "--out", str(b)])
    assert r.exit_code == 0, r.output
    assert "stopped at step 13" in r.output
    assert load_checkpoint(b / "checkpoint.pt")["step"] == 13
    (b / ".checkpoint.d34d.pt").write_bytes(b"half")  # a save killed mid-write
    r = run.invoke(main, [*SYN, "--resume", "--out", str(b)])
    assert r.exit_code == 0, r.output
    _assert_same_weights(a, b)
    assert not (b / ".checkpoint.d34d.pt").exists()
    recs = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in recs]
    assert len(keys) == len(set(keys)) and ("epoch", 30) in keys  # no record twice


def test_train_synthetic_checkpoints_before_the_end(tmp_path, monkeypatch):
    import scorefpe.training.loop as loop

    saved = []
    real = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda p, st: (saved.append(st["step"]), real(p, st)))
    r = CliRunner().invoke(main, [*SYN, "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert saved == [10, 20, 30]


def test_a_fresh_run_does_not_append_to_stale_metrics(tmp_path):
    out = tmp_path / "r"
    run = CliRunner()
    assert run.invoke(main, [*SYN, "--out", str(out)]).exit_code == 0
    first = (out / "metrics.jsonl").read_text()
    (out / "checkpoint.pt").unlink()  # a run abandoned before its checkpoint: start it again
    r = run.invoke(main, [*SYN, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "metrics.jsonl").read_text().count("\n") == first.count("\n")


# ---------------------------------------------------------------------------------------------
# cauchy: divergence names the term and leaves the directory reusable; an ODE failure keeps
# results.json
SMALL = ["--hidden", "16", "--depth", "2", "--batch-size", "32", "--ic-batch-size", "32",
         "--eval-samples", "40", "--sampler-steps", "5", "--eval-points", "64", "--fp-points", "8",
         "--density-points", "0", "--density-grid", "0"]


def test_cauchy_divergence_names_the_term_and_a_retry_runs_in_the_same_directory(tmp_path):
    out = tmp_path / "c"
    run = CliRunner()
    r = run.invoke(main, ["cauchy", *SMALL, "--no-baseline", "--steps", "4", "--lr", "1e30",
                          "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "term '" in err[0] and "--lr" in err[0], r.output
    assert not out.exists() or not any(out.iterdir())
    r = run.invoke(main, ["cauchy", *SMALL, "--no-baseline", "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output


def test_cauchy_keeps_results_json_when_one_evaluation_fails(tmp_path, monkeypatch):
    import scorefpe.experiments.cauchy as pr

    real = pr.evaluate_model
    calls = []

    def second_fails(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("probability-flow ODE solver failed: Required step size is less "
                               "than spacing between numbers.")
        return real(*a, **kw)

    monkeypatch.setattr(pr, "evaluate_model", second_fails)
    out = tmp_path / "c"
    r = CliRunner().invoke(main, ["cauchy", *SMALL, "--steps", "2", "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "ODE solver failed" in r.output
    res = json.loads((out / "results.json").read_text())
    assert "eval" in res["runs"]["pinn"] and "eval_error" not in res["runs"]["pinn"]
    assert "ODE solver failed" in res["runs"]["dsm"]["eval_error"]


# ---------------------------------------------------------------------------------------------
# A full disk is one line, not a traceback
def _eval_json() -> dict:
    return {"sampling": {"sampler": "pc", "steps": 10, "n": 8}, "fid": 1.0, "density": 0.5,
            "coverage": 0.5, "entropy_nats": 2.0, "nll": None, "time_per_epoch": {"mean_s": None},
            "machine": "test"}


def test_a_full_disk_ends_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "eval.json").write_text(json.dumps(_eval_json()))
    out = tmp_path / "report.md"

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(util, "atomic_write_bytes", full)
    r = CliRunner().invoke(main, ["report", str(tmp_path), "--md", str(out)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "No space left on device" in err[0] and "report.md" in err[0]
    assert not out.exists()


def test_other_os_errors_are_not_hidden(tmp_path, monkeypatch):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "eval.json").write_text(json.dumps(_eval_json()))

    def broken(path, data):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(util, "atomic_write_bytes", broken)
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert isinstance(r.exception, OSError) and r.exception.errno == errno.EIO


# ---------------------------------------------------------------------------------------------
# Corrupt metrics.jsonl / eval.json name the file
def test_a_corrupt_metrics_file_is_named(tmp_path):
    from scorefpe._util import read_jsonl

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"kind": "step", "step": 1}\n[1, 2]\n{"kind": "step", "step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2"):
        read_jsonl(p)
    p.write_text('{"kind": "step", "step": 1}\n{"kind": "st')  # cut by a crash: tolerated
    assert read_jsonl(p) == [{"kind": "step", "step": 1}]
    p.write_bytes(b'{"step": 1}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl"):
        read_jsonl(p)


def test_time_per_epoch_names_a_corrupt_metrics_file(tmp_path):
    from scorefpe.evaluation.run_eval import time_per_epoch

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "metrics.jsonl").write_text('{"kind": "epoch", "complete": true, "time_s": "x"}\n')
    with pytest.raises(ValueError, match="metrics.jsonl"):
        time_per_epoch(tmp_path)


# ---------------------------------------------------------------------------------------------
# Threads and old spellings
def test_default_threads_follow_omp_num_threads_else_one(monkeypatch):
    from scorefpe.cli._options import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    for bad in ("", "0", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert default_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == 1


def test_threads_option_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        r = CliRunner().invoke(main, [*SYN, "--threads", "2", "--max-steps", "1",
                                      "--out", str(tmp_path / "t")])
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 2
        r = CliRunner().invoke(main, [*SYN, "--max-steps", "1", "--out", str(tmp_path / "u")],
                               env={"OMP_NUM_THREADS": "1"})
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_computing_command_has_threads():
    def leaves(cmd, path=()):
        import click

        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from leaves(sub, (*path, name))
        else:
            yield " ".join(path), cmd

    no_compute = {"derive", "data fetch", "report"}
    for name, cmd in leaves(main):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if name not in no_compute and name != "check":  # check: scorefpe/modelcheck's options
            assert "--threads" in opts, name


def test_old_spellings_still_work_and_say_so(tmp_path):
    r = CliRunner().invoke(main, ["bench", "penalties", "--batch", "0"])
    assert r.exit_code == 2 and "--batch" in r.output
    r = CliRunner().invoke(main, ["bench", "penalties", "--batch", "4", "--batch-size", "4"])
    assert r.exit_code == 2 and "old spelling of --batch-size" in r.output
    out = tmp_path / "s"
    r = CliRunner().invoke(main, [*SYN[:2], "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0
    r = CliRunner().invoke(main, ["likelihood", str(out), "--n", "4", "--json", str(tmp_path / "l.json")])
    assert r.exit_code == 0, r.output
    assert "--n is deprecated; use --n-points" in r.output
    assert json.loads((tmp_path / "l.json").read_text())["n"] == 4


# ---------------------------------------------------------------------------------------------
# kill -9 of `train mnist`, then --resume: the same weights as an uninterrupted run
def _tiny_idx(d: Path, n: int = 64) -> Path:
    from scorefpe.data.idx import write_idx

    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, m, (img, lab) in (("train", n, ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")),
                                 ("test", 8, ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))):
        write_idx(d / img, rng.integers(0, 256, (m, 28, 28), dtype=np.uint8))
        write_idx(d / lab, rng.integers(0, 10, m).astype(np.uint8))
    return d


def _cli_subprocess(args: list[str], env: dict) -> subprocess.Popen:
    code = "import sys\nfrom scorefpe.cli.main import main\nsys.argv[0] = 'scorefpe'\nmain()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_kill_9_of_train_mnist_then_resume_gives_the_same_weights(tmp_path):
    data = _tiny_idx(tmp_path / "mnist")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               SCOREFPE_CACHE=str(tmp_path / "cache"))
    args = ["train", "mnist", "--preset", "smoke", "--penalty", "div", "--width", "0.125",
            "--n-train", "64", "--batch-size", "8", "--epochs", "3", "--checkpoint-every", "1",
            "--data-dir", str(data)]
    a, b = tmp_path / "a", tmp_path / "b"
    p = _cli_subprocess([*args, "--out", str(a)], env)
    assert p.wait(timeout=600) == 0, p.stdout.read().decode()[-2000:]
    p = _cli_subprocess([*args, "--out", str(b)], env)
    deadline = time.time() + 600
    step = 0
    while time.time() < deadline and p.poll() is None:
        m = b / "metrics.jsonl"
        if m.is_file():
            lines = m.read_text().splitlines()
            step = json.loads(lines[-1]).get("step", 0) if lines and lines[-1].endswith("}") else step
            if step >= 7:
                break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = load_checkpoint(b / "checkpoint.pt")["step"]
    assert 0 < killed_at < 24
    p = _cli_subprocess([*args, "--resume", "--out", str(b)], env)
    assert p.wait(timeout=600) == 0, p.stdout.read().decode()[-2000:]
    _assert_same_weights(a, b)
    assert not list(b.glob(".checkpoint.*"))
