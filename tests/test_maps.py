"""Score and divergence maps (`scorefpe.evaluation.maps`, `scorefpe maps`): averaged maps of a
linear score s(x, t) = -A x / sigma(t)^2, whose Jacobian diagonal -diag(A) / sigma^2 and mean
score -a(t) A x0 / sigma^2 are known exactly, against their closed forms within bounds derived
from the number of noise draws and probes; files; bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from scorefpe.evaluation.maps import MapConfig, ScoreMaps, compute_maps, write_maps
from scorefpe.sde import make_sde

SDE = make_sde("vp")
SHAPE = (1, 6, 6)
D = 36
Z_BOUND = 5.0  # |N(0,1)| > 5 has probability 5.7e-7 per entry; ~100 entries per test


def _matrix(seed: int) -> torch.Tensor:
    """A = I + 0.3 G / sqrt(D): non-symmetric, diagonal near 1, so sigma^2 d_i is near -1."""
    g = torch.Generator().manual_seed(seed)
    return torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(
        D, D, generator=g, dtype=torch.float64) / math.sqrt(D)


def _linear_score(a_mat: torch.Tensor):
    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        var = SDE.marginal_var(t).reshape(-1, 1)
        return (-(x.reshape(x.shape[0], -1) @ a_mat.T) / var).reshape(x.shape)

    return score


def _x0(seed: int = 1) -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _closed_forms(a_mat: torch.Tensor, x0: torch.Tensor, maps: ScoreMaps):
    a = torch.as_tensor(maps.mean_coeff).reshape(-1, 1)
    var = torch.as_tensor(maps.sigma).reshape(-1, 1) ** 2
    score_mean = (-(a * x0.reshape(1, -1)) @ a_mat.T / var).reshape(-1, *SHAPE)
    diag = (-torch.diagonal(a_mat).reshape(1, -1) / var).reshape(-1, *SHAPE)
    # std of one draw of the score, -A sigma z / sigma^2, per pixel: ||A_i|| / sigma
    score_sd = (a_mat.norm(dim=1).reshape(1, -1) / var.sqrt()).reshape(-1, *SHAPE)
    # Rademacher probe std of v_i (J^T v)_i per probe: sqrt(sum_{r != i} J_ri^2)
    off = (a_mat**2).sum(0) - torch.diagonal(a_mat) ** 2
    probe_sd = (off.sqrt().reshape(1, -1) / var).reshape(-1, *SHAPE)
    return score_mean.numpy(), diag.numpy(), score_sd.numpy(), probe_sd.numpy()


def test_exact_maps_match_closed_form():
    a_mat, x0 = _matrix(0), _x0()
    n = 400
    cfg = MapConfig(times=(1e-3, 0.1, 1.0), n_noise=n, method="exact", batch_size=50,
                    chunk_size=36)
    m = compute_maps(_linear_score(a_mat), SDE, x0, cfg)
    score_mean, diag, score_sd, _ = _closed_forms(a_mat, x0, m)
    # The Jacobian is constant: exact diagonal to float64 round-off, zero spread over draws.
    np.testing.assert_allclose(m.diag_mean, diag, rtol=1e-10)
    np.testing.assert_allclose(m.diag_one, diag, rtol=1e-10)
    assert np.abs(m.diag_se).max() <= 1e-9 * np.abs(diag).max()
    np.testing.assert_allclose(m.scaled("diag_mean", 2)[:, 0].reshape(3, -1),
                               -np.broadcast_to(torch.diagonal(a_mat).numpy(), (3, D)), rtol=1e-10)
    # Mean score: Monte Carlo over n draws, standard error ||A_i|| / (sigma sqrt(n)).
    assert np.all(np.abs(m.score_mean - score_mean) <= Z_BOUND * score_sd / math.sqrt(n))
    # Reported se: sample std / sqrt(n); (n-1) se^2 n / sd^2 ~ chi2(n-1), relative sd 0.07.
    ratio = m.score_se * math.sqrt(n) / score_sd
    assert 0.65 < ratio.min() and ratio.max() < 1.35
    # One draw: x = a x0 + sigma z, and the score there.
    x_one = m.mean_coeff.reshape(-1, 1, 1, 1) * x0.numpy() + m.sigma.reshape(-1, 1, 1, 1) * m.z_one
    np.testing.assert_allclose(m.x_one, x_one, rtol=1e-12)
    s_one = _linear_score(a_mat)(torch.as_tensor(m.x_one), torch.as_tensor(m.times)).numpy()
    np.testing.assert_allclose(m.score_one, s_one, rtol=1e-12)
    summ = m.summary()
    assert [r["t"] for r in summ] == [1e-3, 0.1, 1.0]
    for r in summ:
        assert r["sigma2_diag_mean"] == pytest.approx(-float(torch.diagonal(a_mat).mean()),
                                                      rel=1e-10)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.sampled_from([1e-4, 0.03, 0.6]),
       k=st.sampled_from([1, 4]))
def test_hutchinson_average_within_probe_bound(seed, t, k):
    a_mat, x0 = _matrix(seed), _x0(seed + 1)
    n = 64
    cfg = MapConfig(times=(t,), n_noise=n, method="hutchinson", n_probes=k, batch_size=32,
                    seed=seed)
    m = compute_maps(_linear_score(a_mat), SDE, x0, cfg)
    _, diag, _, probe_sd = _closed_forms(a_mat, x0, m)
    # n * k independent Rademacher probes, unbiased: the error is probe noise alone.
    assert np.all(np.abs(m.diag_mean - diag) <= Z_BOUND * probe_sd / math.sqrt(n * k))
    ratio = m.diag_se * math.sqrt(n * k) / probe_sd
    assert 0.5 < ratio.min() and ratio.max() < 1.5
    # The one-draw map stays exact whatever the method of the average.
    np.testing.assert_allclose(m.diag_one, diag, rtol=1e-10)


def test_same_noise_for_every_run_and_reproducible():
    x0 = _x0()
    cfg = MapConfig(times=(0.05, 0.5), n_noise=4, n_probes=2)
    m1 = compute_maps(_linear_score(_matrix(0)), SDE, x0, cfg)
    m2 = compute_maps(_linear_score(_matrix(1)), SDE, x0, cfg)
    np.testing.assert_array_equal(m1.x_one, m2.x_one)
    assert not np.allclose(m1.score_one, m2.score_one)
    m3 = compute_maps(_linear_score(_matrix(0)), SDE, x0, cfg)
    np.testing.assert_array_equal(m1.diag_mean, m3.diag_mean)
    m4 = compute_maps(_linear_score(_matrix(0)), SDE, x0,
                      MapConfig(times=(0.05, 0.5), n_noise=4, n_probes=2, seed=1))
    assert not np.array_equal(m1.z_one, m4.z_one)


def test_write_maps_files(tmp_path):
    x0 = _x0()
    cfg = MapConfig(times=(0.01, 0.3, 1.0), n_noise=3, n_probes=2)
    maps = {name: compute_maps(_linear_score(_matrix(i)), SDE, x0, cfg)
            for i, name in enumerate(("a", "b"))}
    paths = write_maps(maps, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(["maps.npz", "maps.json", "maps_single_a.png", "maps_average_a.png",
                            "maps_single_b.png", "maps_average_b.png", "maps_score_runs.png",
                            "maps_div_runs.png"])  # no temporary files left
    for p in paths.values():
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    z = np.load(paths["npz"])
    assert list(z["runs"]) == ["a", "b"]
    assert z["diag_mean"].shape == (2, 3, *SHAPE)
    np.testing.assert_array_equal(z["diag_mean"][1], maps["b"].diag_mean)
    np.testing.assert_array_equal(z["times"], [0.01, 0.3, 1.0])
    rec = json.loads(paths["json"].read_text())
    assert rec["config"]["n_noise"] == 3 and rec["config"]["method"] == "hutchinson"
    assert rec["runs"]["a"][1]["sigma2_diag_mean"] == pytest.approx(
        float(maps["a"].scaled("diag_mean", 2)[1].mean()))


# ---------------------------------------------------------------------------- bad input


def test_library_bad_input():
    with pytest.raises(ValueError, match="at least one time"):
        MapConfig(times=())
    with pytest.raises(ValueError, match="positive and finite"):
        MapConfig(times=(0.1, -1.0))
    with pytest.raises(ValueError, match="n_noise"):
        MapConfig(n_noise=0)
    with pytest.raises(ValueError, match="'bogus'.*'exact'"):
        MapConfig(method="bogus")
    with pytest.raises(ValueError, match="'uniform'.*'rademacher'"):
        MapConfig(probe="uniform")
    score = _linear_score(_matrix(0))
    with pytest.raises(ValueError, match=r"shape \(C, H, W\)"):
        compute_maps(score, SDE, torch.rand(6, 6), MapConfig(times=(0.1,), n_noise=2))
    with pytest.raises(ValueError, match=r"\[t_min, T\]"):
        compute_maps(score, SDE, _x0(), MapConfig(times=(1e-6,), n_noise=2), t_min=1e-5)
    with pytest.raises(ValueError, match=r"\[t_min, T\]"):
        compute_maps(score, SDE, _x0(), MapConfig(times=(1.5,), n_noise=2))
    with pytest.raises(ValueError, match="shaped like x"):
        compute_maps(lambda x, t: x[:, :, :3], SDE, _x0(), MapConfig(times=(0.1,), n_noise=2))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from scorefpe.training import mnist_run, train_mnist

    d = tmp_path_factory.mktemp("run") / "tiny-s0"
    run = mnist_run("smoke", width=0.125, batch_size=8, epochs=1, checkpoint_every=1,
                    log_every=1)
    g = torch.Generator().manual_seed(0)
    train_mnist(run, d, images=torch.rand(8, 1, 28, 28, generator=g))
    return d


@pytest.fixture
def fake_mnist(monkeypatch):
    import scorefpe.data.mnist as mn

    g = torch.Generator().manual_seed(3)
    images = torch.rand(5, 1, 28, 28, generator=g)
    monkeypatch.setattr(mn, "mnist_tensor", lambda split, **kw: (images, torch.arange(5)))


def _cli(args):
    from scorefpe.cli.main import main

    return CliRunner().invoke(main, ["maps", *args])


def test_cli_writes_maps(tmp_path, run_dir, fake_mnist):
    out = tmp_path / "maps"
    res = _cli([str(run_dir), "--out", str(out), "--times", "0.1,1", "--n-noise", "2",
                "--n-probes", "2", "--digit-index", "4"])
    assert res.exit_code == 0, res.output
    z = np.load(out / "maps.npz")
    assert z["score_mean"].shape == (1, 2, 1, 28, 28)
    assert (out / "maps_div_runs.png").is_file()
    assert (out / f"maps_average_{run_dir.name}.png").is_file()


@pytest.mark.parametrize("args, msg", [
    (["--times", "0.1,abc"], "comma-separated numbers"),
    (["--times", "0.1,-2"], "positive and finite"),
    (["--times", "1e-7"], "t_min"),
    (["--n-noise", "0"], "must be > 0"),
    (["--method", "svd"], "svd"),
    (["--digit-index", "5"], "out of range"),
])
def test_cli_bad_input_exits_2(tmp_path, run_dir, fake_mnist, args, msg):
    out = tmp_path / "maps"
    res = _cli([str(run_dir), "--out", str(out), "--n-noise", "2", *args])
    assert res.exit_code == 2, res.output
    assert msg in res.output
    assert not out.exists()


def test_cli_bad_run_dirs_exit_2(tmp_path, run_dir):
    res = _cli([str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "empty").mkdir()
    res = _cli([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a run directory" in res.output
    res = _cli([str(run_dir), str(run_dir), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "distinct names" in res.output
    (tmp_path / "file").write_text("x")
    res = _cli([str(run_dir), "--out", str(tmp_path / "file")])
    assert res.exit_code == 2
