"""`scorefpe check --model RUN --model RUN ...`: several trained models checked with the same
draws and overlaid (the 2026 paper's Figs. 6-8), on two tiny run directories."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scorefpe.cli.main import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two 2-step runs (none, sn), a copy of the first under another name, and 8 x0 images."""
    from scorefpe.training import mnist_run, train_mnist

    root = tmp_path_factory.mktemp("overlay")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 28, 28, generator=g)
    for loss in ("none", "sn"):
        train_mnist(mnist_run("smoke", penalty=loss, lam=0.0 if loss == "none" else 1e-2,
                              max_steps=2, batch_size=8, checkpoint_every=2),
                    root / f"{loss}-s0", images=images)
    shutil.copytree(root / "none-s0", root / "copy" / "none-again")
    np.save(root / "x0.npy", torch.rand(8, 1, 28, 28, generator=g).numpy())
    return root / "none-s0", root / "sn-s0", root / "copy" / "none-again"


def _rows(text: str) -> dict[tuple[str, str, str], float]:
    return {(r["run"], r["t"], r["quantity"]): float(r["mean"])
            for r in csv.DictReader(io.StringIO(text))}


ARGS = ["--t-grid", "0.1,1", "--n-points", "2", "--n-probes", "1"]


def test_cli_overlay_of_two_runs(runs, tmp_path):
    a, b, a2 = runs
    out = tmp_path / "ov"
    res = CliRunner().invoke(main, ["check", "--model", str(a), "--model", str(b),
                                    "--model", str(a2), "--data", str(a.parent / "x0.npy"),
                                    *ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "overlay.png").stat().st_size > 10_000
    rows = _rows((out / "overlay.csv").read_text())
    assert {k[0] for k in rows} == {"none-s0", "sn-s0", "none-again"}
    assert {k[2] for k in rows} >= {"r_fp", "asym", "nasym", "dsm"}
    # The overlay holds each run's own report (one computation), value for value.
    for label in ("none-s0", "sn-s0"):
        own = list(csv.DictReader(io.StringIO((out / label / "report.csv").read_text())))
        for r in own:
            assert rows[(label, r["t"], "r_fp")] == float(r["r_fp_mean"])
            assert rows[(label, r["t"], "nasym")] == float(r["nasym_mean"])
    # Same draws for every model: the same weights under another name give the same numbers,
    # while the other loss's (differently trained) weights do not.
    same = [rows[("none-again",) + k[1:]] == v for k, v in rows.items() if k[0] == "none-s0"]
    assert all(same) and len(same) >= 8
    assert any(rows[("sn-s0",) + k[1:]] != v for k, v in rows.items() if k[0] == "none-s0")


def test_library_check_runs_matches_the_cli(runs, tmp_path):
    from scorefpe.modelcheck import data_sampler
    from scorefpe.modelcheck.overlay import check_runs, overlay_csv, plot_overlay, write_overlay

    a, b, _ = runs
    reps = check_runs([a, b], data_sampler(str(a.parent / "x0.npy")).sample, t_grid=(0.1, 1.0),
                      n_points=2, n_probes=1, dtype=torch.float32, seed=0)
    assert list(reps) == ["none-s0", "sn-s0"]
    out = tmp_path / "ov"
    res = CliRunner().invoke(main, ["check", "--model", str(a), "--model", str(b), "--data",
                                    str(a.parent / "x0.npy"), *ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    cli = _rows((out / "overlay.csv").read_text())
    lib = _rows(overlay_csv(reps))
    assert set(lib) == set(cli)
    for k, v in cli.items():
        assert lib[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k
    assert plot_overlay(reps, tmp_path / "f.png").stat().st_size > 10_000
    png, table = write_overlay(reps, tmp_path / "lib")
    assert png.stat().st_size > 10_000 and _rows(table.read_text()) == lib


def test_cli_overlay_bad_input(runs, tmp_path):
    a, b, a2 = runs
    x0 = str(a.parent / "x0.npy")
    res = CliRunner().invoke(main, ["check", "--model", str(a), "--model", str(b), "--data", x0])
    assert res.exit_code == 2 and "--out" in res.output
    dup = a2.parent / "none-s0"
    shutil.copytree(a, dup)
    out = tmp_path / "ov"
    res = CliRunner().invoke(main, ["check", "--model", str(a), "--model", str(dup), "--data", x0,
                                    "--out", str(out)])
    assert res.exit_code == 2 and "distinct" in res.output and "none-s0" in res.output
    assert not out.exists()
    f = tmp_path / "file"
    f.write_text("x")
    res = CliRunner().invoke(main, ["check", "--model", str(a), "--model", str(b), "--data", x0,
                                    "--out", str(f)])
    assert res.exit_code == 2 and "is a file" in res.output
