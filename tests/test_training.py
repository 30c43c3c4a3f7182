"""The generic training loop: exact resume, NaN stop, atomic files, metrics, EMA, data order,
and the MNIST presets (on tiny random tensors: no data set needed here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scorefpe.models import MLPConfig, MLPScoreNet
from scorefpe.penalties import LossTerms, PenaltyConfig
from scorefpe.sde import VPSDE
from scorefpe.training import (
    EMA,
    NonFiniteLossError,
    SampledBatches,
    StepContext,
    TensorBatches,
    TrainConfig,
    dsm_objective,
    load_checkpoint,
    load_run,
    mnist_run,
    save_checkpoint,
    train,
    train_mnist,
)
from scorefpe.training.checkpoint import CHECKPOINT_NAME

IMAGES = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _tiny_run(**kw):
    base = dict(penalty="div", lam=1e-2, width=0.125, n_train=None, batch_size=8, epochs=2,
                checkpoint_every=2, log_every=1, device="cpu", ema_decay=0.9)
    base.update(kw)
    preset_kw = {k: base.pop(k) for k in ("penalty", "lam")}
    return mnist_run("smoke", **preset_kw, **base)


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not _state_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# --------------------------------------------------------------------------------------------
# Resume: an interrupted run continued with resume=True equals the uninterrupted one, bitwise.
# --------------------------------------------------------------------------------------------


def test_resume_is_bitwise_exact(tmp_path):
    # 24 images / batch 8 = 3 steps per epoch, 2 epochs; interrupt after step 4 (mid epoch 2).
    full = _tiny_run()
    train_mnist(full, tmp_path / "a", images=IMAGES)
    cut = _tiny_run(max_steps=4)
    res = train_mnist(cut, tmp_path / "b", images=IMAGES)
    assert res.step == 4 and not res.finished
    res = train_mnist(full, tmp_path / "b", images=IMAGES, resume=True)
    assert res.step == 6 and res.finished

    a = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    for key in ("model", "ema", "optimizer"):
        assert _state_equal(a[key], b[key]), key
    assert a["step"] == b["step"] == 6
    # The loss curve is the same too, step by step.
    la = [(r["step"], r["terms"]) for r in _records(tmp_path / "a", "step")]
    lb = [(r["step"], r["terms"]) for r in _records(tmp_path / "b", "step")]
    assert la == lb and [s for s, _ in la] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_changed_settings_and_fresh_run_refuses_old_dir(tmp_path):
    run = _tiny_run(max_steps=2)
    train_mnist(run, tmp_path, images=IMAGES)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train_mnist(run, tmp_path, images=IMAGES)
    with pytest.raises(ValueError, match=r"train\.lr"):
        train_mnist(_tiny_run(lr=1e-2), tmp_path, images=IMAGES, resume=True)
    with pytest.raises(ValueError, match="penalty"):
        train_mnist(_tiny_run(lam=0.5), tmp_path, images=IMAGES, resume=True)
    with pytest.raises(FileNotFoundError):
        train_mnist(run, tmp_path / "nothing", images=IMAGES, resume=True)


# --------------------------------------------------------------------------------------------
# Non-finite loss: stop naming step and term; the last good checkpoint stays.
# --------------------------------------------------------------------------------------------


def test_nan_stops_with_step_and_term_and_keeps_last_checkpoint(tmp_path):
    run = _tiny_run()
    sde = VPSDE()
    inner = dsm_objective(sde, run.penalty)

    def poisoned(model, x0, ctx: StepContext) -> LossTerms:
        out = inner(model, x0, ctx)
        if ctx.step == 4:  # the 5th optimizer step
            out.terms["div"] = out.terms["div"] * float("nan")
        return out

    from scorefpe.models import ScoreNet

    model = ScoreNet(sde, run.model, seed=0)
    data = TensorBatches(IMAGES, 8, seed=0)
    with pytest.raises(NonFiniteLossError) as info:
        train(model, poisoned, data, run.train, tmp_path, run_config=run.to_dict())
    err = info.value
    assert (err.step, err.term, err.checkpoint_step) == (5, "div", 4)
    assert "step 5" in str(err) and "'div'" in str(err)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 4
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())
    stop = _records(tmp_path, "stop")
    assert stop and stop[-1]["term"] == "div" and stop[-1]["step"] == 5
    # Resuming from the kept checkpoint with the clean objective works.
    assert train_mnist(run, tmp_path, images=IMAGES, resume=True).step == 6


def test_non_finite_gradient_is_caught(tmp_path):
    # sqrt(|0 * w|) is finite (0) but its gradient is 0 * inf = NaN.
    model = MLPScoreNet(MLPConfig(dim=2, hidden=8, depth=1, embed_dim=4))

    def loss_fn(net, x0, ctx):
        w = net.net.out.weight
        return LossTerms({"dsm": net(x0, torch.full((x0.shape[0],), 0.5)).pow(2).sum(-1),
                          "bad": (w * 0).abs().sqrt().sum().expand(x0.shape[0])})

    data = SampledBatches(lambda n, g: torch.randn(n, 2, generator=g), 4, 3)
    with pytest.raises(NonFiniteLossError, match="step 1: term 'gradient'"):
        train(model, loss_fn, data, TrainConfig(batch_size=4, device="cpu"), tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


# --------------------------------------------------------------------------------------------
# Files: config, metrics, atomic checkpoints.
# --------------------------------------------------------------------------------------------


def test_config_and_metrics_files(tmp_path):
    run = _tiny_run(epochs=1, penalty="sn")
    train_mnist(run, tmp_path, images=IMAGES)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["penalty"]["penalty"] == "sn" and cfg["penalty"]["lam"] == 1e-2
    assert cfg["train"]["lr"] == 5e-4 and cfg["model"]["width"] == 0.125 and cfg["sde"] == "vp"
    steps = _records(tmp_path, "step")
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert set(steps[0]["terms"]) == {"dsm", "sn"}
    want = steps[0]["terms"]["dsm"] + 1e-2 * steps[0]["terms"]["sn"]
    assert steps[0]["loss"] == pytest.approx(want, rel=1e-12)
    (epoch,) = _records(tmp_path, "epoch")
    assert epoch["steps"] == 3 and epoch["time_s"] > 0 and epoch["peak_mem_bytes"] > 0
    mean_dsm = sum(r["terms"]["dsm"] for r in steps) / 3
    assert epoch["terms_mean"]["dsm"] == pytest.approx(mean_dsm, rel=1e-12)


def test_gradient_norm_is_logged_and_clipped_steps_are_counted(tmp_path):
    """grad_norm is the global norm before clipping; an epoch counts the steps it clipped. A clip
    far below every norm clips each step, one far above none, and no clip writes None."""
    def run(clip, d):
        train_mnist(_tiny_run(epochs=1, penalty="sn", grad_clip=clip), tmp_path / d, images=IMAGES)
        return _records(tmp_path / d, "step"), _records(tmp_path / d, "epoch")[0]

    free, free_ep = run(None, "free")
    norms = [r["grad_norm"] for r in free]
    assert all(math.isfinite(g) and g > 0 for g in norms) and free_ep["clipped_steps"] is None
    tight, tight_ep = run(min(norms) / 10, "tight")
    assert tight_ep["clipped_steps"] == 3
    # The first step's norm is the same with or without clipping (same weights, same batch);
    # after it the clipped run's weights differ.
    assert tight[0]["grad_norm"] == pytest.approx(norms[0], rel=1e-6)
    loose, loose_ep = run(max(norms) * 1e3, "loose")
    assert loose_ep["clipped_steps"] == 0
    # Clipping at 1000x every norm never acts: the same trajectory as no clipping.
    assert [r["grad_norm"] for r in loose] == pytest.approx(norms, rel=1e-6)


def test_failed_checkpoint_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 2, "bad": lambda: 0})  # lambdas cannot be pickled
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temp file left
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_and_json_files_get_the_umask_mode_not_0600(tmp_path, umask):
    # All writers share scorefpe._util.atomic_output: mkstemp's 0600 must be replaced by
    # 0666 & ~umask, the mode open() would give a new file.
    import os
    import stat

    from scorefpe._util import atomic_write_text
    from scorefpe.training.checkpoint import atomic_write_json

    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ck.pt", {"step": 1})
        atomic_write_json(tmp_path / "c.json", {"a": 1})
        atomic_write_text(tmp_path / "ref.txt", "x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("ck.pt", "c.json", "ref.txt")}
    assert modes == {"ck.pt": want, "c.json": want, "ref.txt": want}
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 1}


def test_load_run_returns_the_ema_weights(tmp_path):
    run = _tiny_run(max_steps=2, penalty="none", lam=0.0)
    train_mnist(run, tmp_path, images=IMAGES)
    model, sde, cfg = load_run(tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert all(torch.equal(model.state_dict()[k], state["ema"][k]) for k in state["ema"])
    assert cfg["preset"] == "smoke" and type(sde).__name__ == "VPSDE"


# --------------------------------------------------------------------------------------------
# Parts: EMA, data order, shard-invariant noise, presets.
# --------------------------------------------------------------------------------------------


def test_ema_recurrence():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    for w in (4.0, 8.0):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model)
    # e1 = 0.5*0 + 0.5*4 = 2; e2 = 0.5*2 + 0.5*8 = 5
    assert float(ema.state_dict()["weight"]) == 5.0
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


def test_tensor_batches_visit_each_sample_once_per_epoch_and_shard_contiguously():
    data = torch.arange(10.0)[:, None]
    src = TensorBatches(data, 4, seed=3)
    assert src.steps_per_epoch == 2
    for epoch in (0, 1):
        seen = torch.cat([src.batch(epoch, i) for i in range(2)])[:, 0]
        assert len(set(seen.tolist())) == 8
    assert not torch.equal(src.permutation(0), src.permutation(1))
    glob = src.batch(1, 1)
    assert torch.equal(torch.cat([src.batch(1, 1, r, 2) for r in range(2)]), glob)
    with pytest.raises(ValueError, match="divisible"):
        src.batch(0, 0, 0, 3)
    with pytest.raises(ValueError, match="larger than the data set"):
        TensorBatches(data, 11)


def test_step_noise_is_the_same_for_any_number_of_processes():
    def draws(world: int) -> tuple[torch.Tensor, torch.Tensor]:
        us, zs = [], []
        for r in range(world):
            ctx = StepContext(seed=5, step=7, rank=r, world=world)
            g = ctx.generator("noise", per_rank=False)
            us.append(ctx.rand_rows(8 // world, g, torch.float32))
            zs.append(ctx.randn_rows((8 // world, 3), g, torch.float32))
        return torch.cat(us), torch.cat(zs)

    u1, z1 = draws(1)
    for world in (2, 4):
        u, z = draws(world)
        assert torch.equal(u, u1) and torch.equal(z, z1)
    a = StepContext(5, 7, 0, 2).generator("probe", per_rank=True)
    b = StepContext(5, 7, 1, 2).generator("probe", per_rank=True)
    assert not torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))


def test_low_dimensional_training_reduces_the_dsm_loss(tmp_path):
    # The loop on 2-D samples (issue 4's path): DSM on N(m, 0.1^2 I) data, VP, t_min = 1e-3.
    sde = VPSDE()
    model = MLPScoreNet(MLPConfig(dim=2, hidden=32, depth=2, embed_dim=8), sde, seed=0)
    mean = torch.tensor([2.0, -1.0])
    data = SampledBatches(lambda n, g: mean + 0.1 * torch.randn(n, 2, generator=g), 128, 50)
    cfg = TrainConfig(lr=3e-3, batch_size=128, epochs=4, log_every=1, device="cpu",
                      checkpoint_every=0)
    obj = dsm_objective(sde, PenaltyConfig(t_min=1e-3))
    train(model, obj, data, cfg, tmp_path)
    dsm = [r["terms"]["dsm"] for r in _records(tmp_path, "step")]
    first, last = sum(dsm[:20]) / 20, sum(dsm[-20:]) / 20
    assert last < 0.6 * first


def test_bf16_autocast_step_runs(tmp_path):
    run = _tiny_run(max_steps=1, precision="bf16", penalty="sn")
    res = train_mnist(run, tmp_path, images=IMAGES)
    assert res.step == 1 and all(math.isfinite(v) for v in res.last_terms.values())


def test_presets_and_bad_settings():
    paper = mnist_run("paper", penalty="fp", lam=1e-3)
    assert (paper.train.epochs, paper.train.batch_size, paper.train.lr) == (200, 32, 1e-3)
    assert paper.model.width == 1.0 and paper.n_train is None and paper.penalty.t_min == 1e-5
    assert mnist_run("paper", penalty="sn", lam=1e-3).train.lr == 5e-4
    assert mnist_run("smoke", epochs=None).train.epochs == 3  # None keeps the preset's value
    # The cpu preset clips the gradient norm at 1000; inf switches clipping off, None keeps it.
    assert mnist_run("cpu").train.grad_clip == 1000.0
    assert mnist_run("smoke").train.grad_clip is None
    assert mnist_run("cpu", grad_clip=math.inf).train.grad_clip is None
    assert mnist_run("cpu", grad_clip=None).train.grad_clip == 1000.0
    assert mnist_run("smoke", grad_clip=0.5).train.grad_clip == 0.5
    with pytest.raises(ValueError, match="grad_clip"):
        mnist_run("smoke", grad_clip=-1.0)
    with pytest.raises(ValueError, match="'tiny'"):
        mnist_run("tiny")
    with pytest.raises(ValueError, match="'foo'"):
        mnist_run("smoke", foo=1)
    with pytest.raises(ValueError, match="'xx'"):
        mnist_run("smoke", sde="xx")
    with pytest.raises(ValueError, match="lam"):
        mnist_run("smoke", penalty="div", lam=-1.0)
    with pytest.raises(ValueError, match="'gpu'"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="'fp8'"):
        TrainConfig(precision="fp8")


# --------------------------------------------------------------------------------------------
# CLI: bad input exits 2 naming the value; nothing is written for it.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--penalty", "l2"], "'l2'"),
        (["--penalty", "div", "--lam", "-1e-3"], "-0.001"),
        (["--preset", "huge"], "'huge'"),
        (["--device", "gpu"], "'gpu'"),
        (["--precision", "fp8"], "'fp8'"),
        (["--sub-batch", "0"], "--sub-batch"),
        (["--grad-clip", "0"], "--grad-clip"),
        (["--grad-clip", "nan"], "'nan'"),
    ],
)
def test_cli_train_bad_input_exits_2(tmp_path, args, needle):
    from click.testing import CliRunner

    from scorefpe.cli.main import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "mnist", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert not out.exists()


def test_cli_train_missing_data_exits_2(tmp_path):
    from click.testing import CliRunner

    from scorefpe.cli.main import main

    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "mnist", "--out", str(out), "--data-dir", str(empty)])
    assert res.exit_code == 2, res.output
    assert str(empty) in res.output and "MNIST" in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["train", "mnist", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "no checkpoint to resume" in res.output


def test_cli_train_runs_and_resumes_on_given_data(tmp_path, monkeypatch):
    # The loader is replaced by tiny random digits: this checks the command's plumbing, not data.
    from click.testing import CliRunner

    import scorefpe.data.mnist as mnist_mod
    from scorefpe.cli.main import main

    monkeypatch.setattr(mnist_mod, "mnist_tensor", lambda split, data_dir=None, n=None: (IMAGES, None))
    out = tmp_path / "run"
    base = ["train", "mnist", "--out", str(out), "--penalty", "sn", "--width", "0.125",
            "--batch-size", "8", "--epochs", "1", "--device", "cpu"]
    res = CliRunner().invoke(main, [*base, "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    assert "stopped at step 2" in res.output
    res = CliRunner().invoke(main, base)
    assert res.exit_code == 2 and "--resume" in res.output
    res = CliRunner().invoke(main, [*base, "--resume"])
    assert res.exit_code == 0, res.output
    assert "finished at step 3" in res.output


def test_cli_bench_penalties_tiny(tmp_path):
    from click.testing import CliRunner

    from scorefpe.cli.main import main

    md = tmp_path / "bench.md"
    res = CliRunner().invoke(main, ["bench", "penalties", "--batch", "4", "--repeats", "1",
                                    "--width", "0.125", "--sub-batch", "2", "--device", "cpu",
                                    "--out", str(md)])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    for label in ("| dsm |", "| dsm+sn |", "| dsm+div |", "| dsm+jac |", "| dsm+fp |",
                  "dsm+fp (sub-batch 2)"):
        assert label in text
    assert "Machine:" in text and "1.00x" in text
    from scorefpe._util import machine_description

    assert f"Machine: {machine_description('cpu')}" in text
    res = CliRunner().invoke(main, ["bench", "penalties", "--device", "tpu"])
    assert res.exit_code == 2 and "'tpu'" in res.output


def test_machine_name_helpers(monkeypatch):
    import platform
    import shutil
    import subprocess

    import torch

    from scorefpe import _util

    name = _util.cpu_name()
    assert name and "\n" not in name
    lscpu = shutil.which("lscpu")
    if lscpu is not None:  # the name docs quote from `lscpu | grep 'Model name'`
        out = subprocess.run([lscpu], capture_output=True, text=True).stdout
        model = [ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name")]
        if model:
            assert name == model[0]
    assert _util.machine_description(torch.device("cpu")) == (
        f"{name}; torch {torch.__version__}; {torch.get_num_threads()} thread(s)")
    # Neither /proc/cpuinfo nor lscpu: the platform's answer, never an empty string.
    monkeypatch.setattr(_util.Path, "read_text", lambda self: "")
    monkeypatch.setattr(_util.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert _util.cpu_name() == (platform.processor() or platform.machine() or "unknown CPU")


def test_cli_train_estimator_and_t_proposal_reach_the_run(tmp_path, monkeypatch):
    # --estimator / --t-proposal are PenaltyConfig fields: they must land in the run's config and
    # change the training (fd DIV draws no VJP; log-mixture t reweights every term).
    import json

    from click.testing import CliRunner

    import scorefpe.data.mnist as mnist_mod
    from scorefpe.cli.main import main

    monkeypatch.setattr(mnist_mod, "mnist_tensor", lambda split, data_dir=None, n=None: (IMAGES, None))
    base = ["train", "mnist", "--penalty", "div", "--width", "0.125", "--batch-size", "8",
            "--epochs", "1", "--device", "cpu", "--max-steps", "2"]
    losses = {}
    for name, extra in {"default": [], "fd": ["--estimator", "fd"],
                        "lm": ["--t-proposal", "log-mixture"]}.items():
        out = tmp_path / name
        res = CliRunner().invoke(main, [*base, "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        pen = json.loads((out / "config.json").read_text())["penalty"]
        assert pen["estimator"] == ("fd" if name == "fd" else "autograd")
        assert pen["t_proposal"] == ("log-mixture" if name == "lm" else "uniform")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r for r in rows if "loss" in r][0]["loss"]
    assert losses["fd"] != losses["default"] and losses["lm"] != losses["default"]
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "bad"), "--estimator", "fdd"])
    assert res.exit_code == 2 and "fdd" in res.output
