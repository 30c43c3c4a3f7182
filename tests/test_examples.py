"""Every script in examples/ runs, at small sizes, and shows what its docstring promises."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))  # check_eps_network imports its sibling check_gaussian
    try:
        spec = importlib.util.spec_from_file_location(f"_ex_{name}", EXAMPLES / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(EXAMPLES))
    return mod


def test_check_gaussian_exact_vs_rotated():
    mod = _load("check_gaussian")
    reps = mod.main(n_points=16, t_grid="1e-2:1:3", echo=lambda s: None)
    ex, rot = reps["exact"], reps["rotated"]
    for s in ex.stats["r_fp"] + ex.stats["asym"] + ex.stats["true_dist"]:
        assert abs(s.mean) < 1e-20  # float64 round-off
    for s in rot.stats["asym"]:
        assert s.mean == pytest.approx(4 * mod.LAM**2, rel=1e-10)  # exact: 4 lam^2
    assert min(s.mean for s in rot.stats["nasym"]) > 0.05


def test_check_gaussian_runs_as_script():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = "import check_gaussian as m; m.main(n_points=8, t_grid='0.1:1:2')"
    res = subprocess.run([sys.executable, "-c", code], cwd=EXAMPLES, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "NAsym: exact score" in res.stdout


def test_check_eps_network():
    mod = _load("check_eps_network")
    reps = mod.main(n_points=16, t_grid="0.05:1:2", train_steps=30, echo=lambda s: None)
    exact = reps["exact eps"]
    for s in exact.stats["r_fp"] + exact.stats["true_dist"]:
        assert abs(s.mean) < 1e-20  # the eps -> score conversion is exact
    mlp = reps["trained MLP eps"]
    assert min(s.mean for s in mlp.stats["true_dist"]) > 1e-6
    assert min(s.mean for s in mlp.stats["asym"]) > 1e-8  # an unconstrained net: no gradient


class _ScriptableGaussianEps(torch.nn.Module):
    """Exact eps-prediction for the example's Gaussian under VPSDE(0.1, 20), TorchScript-able."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mu.clone())
        self.register_buffer("sigma", sigma.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_a = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
        a = log_a.exp()
        v = -torch.expm1(2 * log_a)
        eye = torch.eye(2, dtype=x.dtype)
        cov = a[:, None, None] ** 2 * self.sigma + v[:, None, None] * eye
        diff = x - a[:, None] * self.mu
        return v.sqrt()[:, None] * torch.linalg.solve(cov, diff.unsqueeze(-1)).squeeze(-1)


def test_check_run_dir_torchscript(tmp_path):
    # The documented fallback of the hook: run_dir/model.pt (TorchScript) with the caller's SDE.
    gauss = _load("check_gaussian")
    run = tmp_path / "run"
    run.mkdir()
    net = _ScriptableGaussianEps(gauss.MU, gauss.SIGMA).double()
    torch.jit.save(torch.jit.script(net), str(run / "model.pt"))
    np.save(tmp_path / "x0.npy", gauss.sample_x0(64, torch.Generator().manual_seed(0)).numpy())
    mod = _load("check_run_dir")
    rep = mod.main(str(run), param="eps", data=str(tmp_path / "x0.npy"), n_points=8,
                   t_grid="0.1:1:2", echo=lambda s: None)
    for s in rep.stats["r_fp"] + rep.stats["asym"]:
        assert abs(s.mean) < 1e-20  # exact model, exact conversion, through TorchScript


def _smoke_run_dir(tmp_path: Path) -> Path:
    """A real `scorefpe train`-format MNIST run dir: smoke preset, 2 steps on random images (the
    format, not the quality, is what is tested)."""
    from scorefpe.training import mnist_run, train_mnist

    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    run = tmp_path / "mnist_smoke"
    train_mnist(mnist_run("smoke", max_steps=2, batch_size=16, checkpoint_every=2), run, images=images)
    return run


def test_check_run_dir_trained(tmp_path):
    run = _smoke_run_dir(tmp_path)
    np.save(tmp_path / "imgs.npy", np.random.default_rng(0).uniform(0, 1, (16, 1, 28, 28)))
    mod = _load("check_run_dir")
    rep = mod.main(str(run), data=str(tmp_path / "imgs.npy"), n_points=4, t_grid="0.1:1:2",
                   echo=lambda s: None)
    assert rep.meta["dim"] == 784 and rep.meta["exact"] is False
    assert all(np.isfinite(s.mean) for s in rep.stats["r_fp"])


def test_check_run_dir_takes_the_data_from_an_mnist_run(tmp_path, monkeypatch):
    # No --data: an MNIST run is checked on MNIST test digits (a small real-format IDX test split
    # in the cache), not on the 2-D gmm2d the example used to default to.
    from problems import write_mnist_test_idx

    run = _smoke_run_dir(tmp_path)
    monkeypatch.setenv("SCOREFPE_CACHE", str(write_mnist_test_idx(tmp_path / "cache")))
    mod = _load("check_run_dir")
    rep = mod.main(str(run), n_points=2, t_grid="0.5:1:2", echo=lambda s: None)
    assert rep.meta["x0_source"] == "mnist" and rep.meta["dim"] == 784
    assert rep.meta["dtype"] == "float32"
    assert all(np.isfinite(s.mean) for s in rep.stats["dsm"])


def test_count_evaluations_rows_follow_from_the_methods():
    # Rows per sample derived from each method (B = 8, D = 4, K = 1): exact traces replicate the
    # batch D times; Hutchinson K times (2K for the curl's two probes); d_t s exact is one JVP,
    # central 2 nodes, nonuniform 3; the estimated residual's VJP pass yields s(x, t), reused for
    # the stencil's offset-0 node: K + 2 rows, not K + 3.
    b, d = 8, 4
    got = _load("count_evaluations").counts(b, d)
    want_rows = {
        "divergence exact": d, "divergence hutchinson K=1": 1,
        "jacobian_frobenius_sq hutchinson K=1": 1, "jacobian_asymmetry_sq hutchinson K=1": 2,
        "time_derivative exact": 1, "time_derivative central": 2, "time_derivative nonuniform": 3,
        "fp_operator exact": d, "fp_residual exact": d + 1, "fp_residual estimated K=1": 1 + 2,
    }
    assert {k: rows / b for k, (_, rows) in got.items()} == want_rows
    assert got["fp_residual exact"][0] == 2 and got["fp_residual estimated K=1"][0] == 2
