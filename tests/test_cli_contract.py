"""The CLI's promise for bad input, command by command (the audit table of docs/reliability.md).

Every case runs one `scorefpe` command in-process (click's CliRunner) on a bad or corrupt input
and asserts the contract: exit code 2, one "Error:" line that names the bad value, no traceback,
and nothing written anywhere under the test's directory (the data cache included). Bad input
must be refused before any data is loaded or any model is trained, so each case takes
milliseconds; the inputs (files, directories, fake runs, small corrupt IDX files) are made per
case in a temporary directory by `_workspace`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scorefpe.cli.main import main

from scorefpe.data.idx import write_idx

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYNTH_CFG = {"dataset": "gmm2d", "sde": "vp", "penalty": "none", "alpha": 0.001, "beta": 0.0,
             "omega": "one", "m": 1, "steps": 10, "batch_size": 8, "lr": 0.001, "t_min": 0.001,
             "hidden": 8, "depth": 1, "seed": 0, "ema_decay": 0.999, "log_every": 50}


def _tiny_mnist(directory: Path) -> Path:
    """Five training and three test digits as gzip IDX files (the cache layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 3)):
        img, lab = MNIST_FILES[split]
        write_idx(directory / img, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / lab, rng.integers(0, 10, n).astype(np.uint8))
    return directory


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _workspace(tmp: Path, setup: str | None) -> dict[str, str]:
    """The paths a case's arguments refer to: F a regular file, D an existing directory, N a
    new path, R a fake MNIST run (config.json + a corrupt checkpoint.pt), S a synthetic run
    with a corrupt checkpoint, SC a synthetic run with a corrupt config.json, C a cauchy run
    with a corrupt checkpoint, E a directory with a corrupt eval.json, EK one whose eval.json
    lacks its keys, X a non-empty directory of no run, W a corrupt LeNet weights file."""
    f = tmp / "plain.txt"
    f.write_text("not a directory\n")
    (tmp / "dir").mkdir()
    run = tmp / "mnist_run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"task": "mnist", "sde": "vp", "model": {},
                                                 "train": {"lr": 1e-3}}))
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    syn = tmp / "synth_run"
    syn.mkdir()
    (syn / "config.json").write_text(json.dumps({"train": {}, "synthetic": SYNTH_CFG}))
    (syn / "checkpoint.pt").write_bytes(b"\x80\x04 truncated pickle")
    sc = tmp / "synth_badcfg"
    sc.mkdir()
    (sc / "config.json").write_text('{"synthetic": {"dataset": "gm')
    (sc / "checkpoint.pt").write_bytes(b"")
    cau = tmp / "cauchy_run"
    (cau / "pinn").mkdir(parents=True)
    (cau / "pinn" / "config.json").write_text("{}")
    (cau / "pinn" / "checkpoint.pt").write_bytes(b"garbage")
    ev = tmp / "evals"
    (ev / "r1").mkdir(parents=True)
    (ev / "r1" / "eval.json").write_text('{"fid": 1.0, "sampl')
    ek = tmp / "evals_keys"
    (ek / "r1").mkdir(parents=True)
    (ek / "r1" / "eval.json").write_text('{"fid": 1.0}')
    other = tmp / "other"
    other.mkdir()
    (other / "notes.txt").write_text("someone else's files\n")
    w = tmp / "lenet.pt"
    w.write_bytes(b"not weights")
    cache = tmp / "cache"
    cache.mkdir()
    if setup is not None:
        mn = _tiny_mnist(cache / "mnist")
        kind, split, which = setup.split("_")  # e.g. "trunc_train_images"
        path = mn / MNIST_FILES[split][0 if which == "images" else 1]
        (_truncate if kind == "trunc" else _flip_bit)(path)
    return {"F": str(f), "D": str(tmp / "dir"), "N": str(tmp / "new"), "R": str(run),
            "S": str(syn), "SC": str(sc), "C": str(cau), "E": str(ev), "EK": str(ek),
            "X": str(other), "W": str(w), "CACHE": str(cache),
            "REPO": str(Path(__file__).resolve().parents[1])}


# (id, arguments with {placeholders}, text the error line must contain, IDX setup or None)
CASES = [
    # check (the battery, and --model: a user's score model)
    ("check-dataset-unknown", "check --dataset gmm9", "gmm9", None),
    ("check-sde-unknown", "check --sde sub", "sub", None),
    ("check-t-min-nan", "check --t-min nan", "nan", None),
    ("check-seed-negative", "check --seed -1", "--seed", None),
    ("check-json-under-file", "check --json {F}/r.json", "plain.txt", None),
    ("check-plot-suffix", "check --plot {N}.jpg", "new.jpg", None),
    ("check-model-missing", "check --model {N}.py:score --sde vp --data gmm2d", "new.py", None),
    ("check-model-not-a-model", "check --model {W} --sde vp --data gmm2d", "lenet.pt", None),
    ("check-model-run-corrupt", "check --model {R} --sde vp --data gmm2d", "checkpoint", None),
    ("check-model-out-under-file", "check --model {REPO}/examples/check_gaussian.py:rotated_score --sde vp "
     "--data gmm2d --out {F}/rep", "plain.txt", None),
    # derive
    ("derive-dim-0", "derive --sde vp --dim 0", "0", None),
    ("derive-dim-text", "derive --sde vp --dim two", "two", None),
    ("derive-sde-unknown", "derive --sde subvpp", "subvpp", None),
    # data fetch
    ("fetch-unknown-dataset", "data fetch cifar10 --cache-dir {N}", "cifar10", None),
    ("fetch-timeout-nan", "data fetch mnist --timeout nan --cache-dir {N}", "nan", None),
    ("fetch-timeout-inf", "data fetch mnist --timeout inf --cache-dir {N}", "inf", None),
    ("fetch-timeout-zero", "data fetch mnist --timeout 0 --cache-dir {N}", "--timeout", None),
    ("fetch-cache-dir-file", "data fetch mnist --cache-dir {F}", "plain.txt", None),
    ("fetch-cache-dir-under-file", "data fetch mnist --cache-dir {F}/c", "plain.txt", None),
    ("fetch-from-dir", "data fetch mnist --from {D} --cache-dir {N}", "dir", None),
    ("fetch-from-missing", "data fetch mnist --from {N}/mnist.pkl.gz --cache-dir {N}", "mnist.pkl.gz", None),
    # train mnist
    ("mnist-penalty-unknown", "train mnist --penalty l2 --out {N}", "l2", None),
    ("mnist-lam-nan", "train mnist --penalty div --lam nan --out {N}", "nan", None),
    ("mnist-lam-negative", "train mnist --penalty div --lam -1 --out {N}", "-1", None),
    ("mnist-lr-inf", "train mnist --lr inf --out {N}", "inf", None),
    ("mnist-lr-zero", "train mnist --lr 0 --out {N}", "--lr", None),
    ("mnist-width-nan", "train mnist --width nan --out {N}", "nan", None),
    ("mnist-epochs-zero", "train mnist --epochs 0 --out {N}", "--epochs", None),
    ("mnist-batch-negative", "train mnist --batch-size -4 --out {N}", "-4", None),
    ("mnist-batch-text", "train mnist --batch-size many --out {N}", "many", None),
    ("mnist-t-min-one", "train mnist --t-min 1 --out {N}", "--t-min", None),
    ("mnist-ema-nan", "train mnist --ema-decay nan --out {N}", "nan", None),
    ("mnist-threads-zero", "train mnist --threads 0 --out {N}", "--threads", None),
    ("mnist-out-file", "train mnist --out {F}", "plain.txt", None),
    ("mnist-out-under-file", "train mnist --out {F}/run", "plain.txt", None),
    ("mnist-out-synthetic-run", "train mnist --out {S}", "train synthetic", None),
    ("mnist-out-cauchy-run", "train mnist --out {C}", "cauchy", None),
    ("mnist-out-foreign-files", "train mnist --out {X}", "other", None),
    ("mnist-resume-nothing", "train mnist --resume --out {N}", "no checkpoint", None),
    ("mnist-data-dir-missing", "train mnist --data-dir {N}/mnist --out {N}", "mnist", None),
    ("mnist-idx-truncated", "train mnist --out {N}", "train-images-idx3-ubyte.gz", "trunc_train_images"),
    ("mnist-idx-bit-flip", "train mnist --out {N}", "train-labels-idx1-ubyte.gz", "flip_train_labels"),
    # train synthetic
    ("synth-dataset-unknown", "train synthetic --dataset gmm9 --out {N}", "gmm9", None),
    ("synth-steps-zero", "train synthetic --steps 0 --out {N}", "--steps", None),
    ("synth-lr-nan", "train synthetic --lr nan --out {N}", "nan", None),
    ("synth-alpha-inf", "train synthetic --penalty fpd --alpha inf --out {N}", "inf", None),
    ("synth-alpha-negative", "train synthetic --penalty fpd --alpha -0.1 --out {N}", "-0.1", None),
    ("synth-t-min-zero", "train synthetic --t-min 0 --out {N}", "--t-min", None),
    ("synth-omega-unknown", "train synthetic --omega two --out {N}", "two", None),
    ("synth-m-zero", "train synthetic --m 0 --out {N}", "--m", None),
    ("synth-checkpoint-every-negative", "train synthetic --checkpoint-every -1 --out {N}", "-1", None),
    ("synth-out-under-file", "train synthetic --out {F}/run", "plain.txt", None),
    ("synth-out-mnist-run", "train synthetic --out {R}", "train mnist", None),
    ("synth-resume-nothing", "train synthetic --resume --out {N}", "no checkpoint", None),
    ("synth-device-unknown", "train synthetic --device npu --out {N}", "npu", None),
    # likelihood
    ("lik-run-missing", "likelihood {N}", "new", None),
    ("lik-run-is-file", "likelihood {F}", "plain.txt", None),
    ("lik-n-points-one", "likelihood {S} --n-points 1", "--n-points", None),
    ("lik-rtol-nan", "likelihood {S} --rtol nan", "nan", None),
    ("lik-atol-inf", "likelihood {S} --atol inf", "inf", None),
    ("lik-method-unknown", "likelihood {S} --method euler", "euler", None),
    ("lik-json-dir", "likelihood {S} --json {D}", "dir", None),
    ("lik-json-under-file", "likelihood {S} --json {F}/r.json", "plain.txt", None),
    ("lik-corrupt-checkpoint", "likelihood {S}", "checkpoint.pt", None),
    ("lik-corrupt-config", "likelihood {SC}", "config.json", None),
    ("lik-not-synthetic", "likelihood {R}", "not a synthetic run", None),
    ("lik-probe-unknown", "likelihood {S} --hutchinson 2 --probe sphere", "sphere", None),
    # curl
    ("curl-n-t-one", "curl {S} --n-t 1", "--n-t", None),
    ("curl-n-points-zero", "curl {S} --n-points 0", "--n-points", None),
    ("curl-json-under-file", "curl {S} --json {F}/c.json", "plain.txt", None),
    ("curl-corrupt-checkpoint", "curl {S}", "checkpoint.pt", None),
    # benchmark synthetic
    ("bench-syn-datasets-twice", "benchmark synthetic --datasets gmm1d,gmm1d --out {N}", "gmm1d", None),
    ("bench-syn-datasets-unknown", "benchmark synthetic --datasets gmm1d,moons --out {N}", "moons", None),
    ("bench-syn-alphas-nan", "benchmark synthetic --alphas 0.01,nan --out {N}", "nan", None),
    ("bench-syn-alphas-text", "benchmark synthetic --alphas 0.01,big --out {N}", "big", None),
    ("bench-syn-seeds-zero", "benchmark synthetic --seeds 0 --out {N}", "--seeds", None),
    ("bench-syn-grid-small", "benchmark synthetic --grid 2 --out {N}", "--grid", None),
    ("bench-syn-out-file", "benchmark synthetic --out {F}", "plain.txt", None),
    ("bench-syn-out-mnist-run", "benchmark synthetic --out {R}", "train mnist", None),
    # bench penalties
    ("bench-width-nan", "bench penalties --width nan", "nan", None),
    ("bench-batch-zero", "bench penalties --batch-size 0", "--batch-size", None),
    ("bench-old-batch-zero", "bench penalties --batch 0", "--batch", None),
    ("bench-repeats-zero", "bench penalties --repeats 0", "--repeats", None),
    ("bench-md-dir", "bench penalties --md {D}", "dir", None),
    ("bench-md-under-file", "bench penalties --md {F}/t.md", "plain.txt", None),
    ("bench-device-unknown", "bench penalties --device tpu", "tpu", None),
    ("bench-data-dir-missing", "bench penalties --data-dir {N}", "new", None),
    ("tprop-width-inf", "bench t-proposal --width inf", "inf", None),
    ("tprop-draws-one", "bench t-proposal --draws 1", "--draws", None),
    ("tprop-proposal-unknown", "bench t-proposal --proposal cauchy", "cauchy", None),
    ("tprop-md-under-file", "bench t-proposal --md {F}/t.md", "plain.txt", None),
    # lenet
    ("lenet-lr-nan", "lenet train --lr nan --weights {N}.pt", "nan", None),
    ("lenet-epochs-zero", "lenet train --epochs 0 --weights {N}.pt", "--epochs", None),
    ("lenet-min-accuracy-two", "lenet train --min-accuracy 2 --weights {N}.pt", "--min-accuracy", None),
    ("lenet-weights-dir", "lenet train --weights {D}", "dir", None),
    ("lenet-weights-under-file", "lenet train --weights {F}/l.pt", "plain.txt", None),
    ("lenet-weights-exist", "lenet train --weights {W}", "lenet.pt", None),
    ("lenet-data-dir-missing", "lenet train --data-dir {N} --weights {N}.pt", "new", None),
    ("lenet-idx-truncated", "lenet train --weights {N}.pt", "t10k-labels-idx1-ubyte.gz", "trunc_test_labels"),
    ("lenet-eval-corrupt-weights", "lenet eval --weights {W}", "lenet.pt", None),
    ("lenet-eval-missing-weights", "lenet eval --weights {N}.pt", "new.pt", None),
    ("lenet-eval-floor-negative", "lenet eval --floor-n -1", "--floor-n", None),
    # sample
    ("sample-run-missing", "sample {N}", "new", None),
    ("sample-not-a-run", "sample {D}", "dir", None),
    ("sample-n-zero", "sample {R} --n-samples 0", "--n-samples", None),
    ("sample-old-n-zero", "sample {R} --n 0", "--n", None),
    ("sample-sampler-unknown", "sample {R} --sampler heun", "heun", None),
    ("sample-steps-zero", "sample {R} --sampler-steps 0", "--sampler-steps", None),
    ("sample-t-min-nan", "sample {R} --t-min nan", "nan", None),
    ("sample-npy-suffix", "sample {R} --npy {N}.txt", "new.txt", None),
    ("sample-npy-under-file", "sample {R} --npy {F}/s.npy", "plain.txt", None),
    ("sample-corrupt-checkpoint", "sample {R} --n-samples 2 --batch-size 2", "checkpoint.pt", None),
    # eval
    ("eval-nll-tol-nan", "eval {R} --nll-tol nan", "nan", None),
    ("eval-nll-tol-inf", "eval {R} --nll-tol inf", "inf", None),
    ("eval-k-zero", "eval {R} --k 0", "--k", None),
    ("eval-nll-n-negative", "eval {R} --nll-n -1", "--nll-n", None),
    ("eval-diag-n-t-one", "eval {R} --diag-n-t 1", "--diag-n-t", None),
    ("eval-nll-probe-unknown", "eval {R} --nll-probe sphere", "sphere", None),
    # report
    ("report-dir-missing", "report {N}", "new", None),
    ("report-dir-is-file", "report {F}", "plain.txt", None),
    ("report-no-evals", "report {D}", "eval.json", None),
    ("report-corrupt-eval-json", "report {E}", "eval.json", None),
    ("report-eval-json-keys", "report {EK}", "eval.json", None),
    ("report-md-dir", "report {E} --md {D}", "dir", None),
    ("report-md-under-file", "report {E} --md {F}/r.md", "plain.txt", None),
    # diagnose
    ("diagnose-png-suffix", "diagnose {R} --png {N}.jpg", "new.jpg", None),
    ("diagnose-png-under-file", "diagnose {R} --png {F}/d.png", "plain.txt", None),
    ("diagnose-png-missing", "diagnose {R}", "--png", None),
    ("diagnose-n-points-zero", "diagnose {R} --png {N}.png --n-points 0", "--n-points", None),
    ("diagnose-same-names", "diagnose {R} {R} --png {N}.png", "distinct names", None),
    ("diagnose-idx-bit-flip", "diagnose {R} --png {N}.png", "t10k-images-idx3-ubyte.gz", "flip_test_images"),
    # maps
    ("maps-out-file", "maps {R} --out {F}", "plain.txt", None),
    ("maps-n-noise-zero", "maps {R} --out {N} --n-noise 0", "--n-noise", None),
    ("maps-times-nan", "maps {R} --out {N} --times 0.1,nan", "nan", None),
    ("maps-times-text", "maps {R} --out {N} --times 0.1,late", "late", None),
    ("maps-method-unknown", "maps {R} --out {N} --method svd", "svd", None),
    ("maps-digit-negative", "maps {R} --out {N} --digit-index -1", "--digit-index", None),
    ("maps-idx-truncated", "maps {R} --out {N}", "t10k-images-idx3-ubyte.gz", "trunc_test_images"),
    # cauchy
    ("cauchy-ic-weight-nan", "cauchy --ic-weight nan --out {N}", "nan", None),
    ("cauchy-lr-inf", "cauchy --lr inf --out {N}", "inf", None),
    ("cauchy-no-closed-form", "cauchy --dataset swissroll --out {N}", "swissroll", None),
    ("cauchy-steps-zero", "cauchy --steps 0 --out {N}", "--steps", None),
    ("cauchy-out-under-file", "cauchy --out {F}/run", "plain.txt", None),
    ("cauchy-out-mnist-run", "cauchy --out {R}", "train mnist", None),
    ("cauchy-resume-corrupt", "cauchy --resume --no-baseline --hidden 8 --depth 1 --out {C}", "checkpoint", None),
    # cauchy-report
    ("cauchy-report-not-a-run", "cauchy-report {X} --out {N}", "other", None),
    ("cauchy-report-unfinished", "cauchy-report {C} --out {N}", "cauchy_run", None),
    ("cauchy-report-missing", "cauchy-report {N} --out {D}", "new", None),
    ("cauchy-report-out-file", "cauchy-report {C} --out {F}", "plain.txt", None),
    ("cauchy-report-model-unknown", "cauchy-report {C} --model ema --out {N}", "ema", None),
    ("cauchy-report-times-nan", "cauchy-report {C} --times 0.5,nan --out {N}", "nan", None),
    # experiments
    ("table1-preset-unknown", "experiment table1 --preset huge --out {N}", "huge", None),
    ("table1-seeds-zero", "experiment table1 --seeds 0 --out {N}", "--seeds", None),
    ("table1-lam-nan", "experiment table1 --lam nan --out {N}", "nan", None),
    ("table1-sub-batch-zero", "experiment table1 --sub-batch fp=0 --out {N}", "fp", None),
    ("table1-sub-batch-unknown", "experiment table1 --sub-batch dsm=8 --out {N}", "dsm", None),
    ("table1-losses-unknown", "experiment table1 --losses none,dsm --out {N}", "dsm", None),
    ("table1-out-file", "experiment table1 --out {F}", "plain.txt", None),
    ("table1-out-foreign", "experiment table1 --out {X}", "other", None),
    ("table1-sampler-steps-zero", "experiment table1 --sampler-steps 0 --out {N}", "--sampler-steps", None),
    ("sweep-lams-nan", "experiment lambda-sweep --lams 1e-3,nan --out {N}", "nan", None),
    ("sweep-lams-text", "experiment lambda-sweep --lams 1e-3,lots --out {N}", "lots", None),
    ("sweep-penalty-none", "experiment lambda-sweep --penalty none --out {N}", "none", None),
    ("sweep-n-t-one", "experiment lambda-sweep --n-t 1 --out {N}", "--n-t", None),
    ("sweep-out-under-file", "experiment lambda-sweep --out {F}/s", "plain.txt", None),
]


def _snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` with (is_dir, size, mtime_ns): any write changes it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def test_the_table_is_large_and_has_no_duplicates():
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids)
    assert len({(c[1], c[3]) for c in CASES}) == len(CASES)
    assert len(CASES) >= 60


@pytest.mark.parametrize("args, needle, setup", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_exits_2_names_it_and_writes_nothing(tmp_path, monkeypatch, args, needle, setup):
    ws = _workspace(tmp_path, setup)
    monkeypatch.setenv("SCOREFPE_CACHE", ws["CACHE"])
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(main, args.format(**ws).split())
    out = res.output
    assert "Traceback" not in out, out
    assert res.exit_code == 2, (res.exit_code, out, res.exception)
    errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, out
    assert needle in errors[0], out
    assert _snapshot(tmp_path) == before, "the command wrote or changed files"
