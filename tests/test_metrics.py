"""Metrics on known answers: Frechet distance, Density/Coverage, class entropy; LeNet files and CLI.

Round-off bounds are stated in units of eps = 2.2e-16 times the size of the quantities summed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from scorefpe.metrics import sample_quality as metrics
from scorefpe.metrics.lenet import (
    ChecksumError,
    LeNet,
    LeNetTrainConfig,
    default_lenet_path,
    lenet_accuracy,
    lenet_features,
    lenet_probs,
    lenet_train_record,
    load_lenet,
    save_lenet,
    train_lenet,
)
from scorefpe.metrics.sample_quality import (
    ClassDistribution,
    EntropyUnit,
    GaussianStats,
    class_distribution,
    class_entropy,
    density_coverage,
    fid_lenet,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    real_data_floor,
    shannon_entropy,
    trace_sqrt_product,
)

EPS = float(np.finfo(np.float64).eps)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(1, 12),
    k=st.floats(0.1, 3.0),
    shift=st.floats(-5.0, 5.0),
    rank_drop=st.integers(0, 6),
)
def test_frechet_shifted_scaled_copy_closed_form(seed, d, k, shift, rank_drop):
    """Y = k X + b has mean k m + b and covariance k^2 S exactly, so
    FD(X, Y) = |(k - 1) m + b|^2 + (1 - k)^2 tr S, for the sample statistics themselves.
    X spans rank max(d - rank_drop, 1): rank-deficient covariances included."""
    r = max(d - rank_drop, 1)
    x = _randn(200, r, seed=seed) @ _randn(r, d, seed=seed + 1) + 1.0
    b = shift * torch.linspace(-1, 1, d, dtype=torch.float64)
    y = k * x + b
    sx = gaussian_stats(x)
    expected = float(((k - 1) * sx.mean + b).pow(2).sum()) + (1 - k) ** 2 * float(torch.trace(sx.cov))
    got = frechet_distance(x, y)
    scale = ((1 + k * k) * float(torch.trace(sx.cov)) + float(sx.mean.pow(2).sum()) * (1 + k) ** 2
             + float(b @ b))
    assert abs(got - expected) <= 200 * d * EPS * scale, (got, expected)


# Entries 0 or of size >= 1e-6: products of tinier ones underflow in the closed form itself.
_entry = st.one_of(st.just(0.0), st.floats(1e-6, 3.0), st.floats(-3.0, -1e-6))


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(_entry, min_size=4, max_size=4),
    b=st.lists(_entry, min_size=4, max_size=4),
    rank_a=st.integers(0, 2),
    rank_b=st.integers(0, 2),
)
def test_trace_sqrt_2x2_closed_form(a, b, rank_a, rank_b):
    """For 2 x 2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); with M = S1^(1/2) S2 S1^(1/2),
    tr M = tr(S1 S2) and det M = det S1 det S2. Rank 0, 1 and 2 covariances."""
    def psd(v, rank):
        L = torch.tensor(v, dtype=torch.float64).reshape(2, 2)[:, :rank]
        return L @ L.T

    s1, s2 = psd(a, rank_a), psd(b, rank_b)
    det = max(float(torch.linalg.det(s1) * torch.linalg.det(s2)), 0.0)
    if rank_a < 2 or rank_b < 2:
        det = 0.0
    tr = float(torch.trace(s1 @ s2))
    expected = math.sqrt(max(tr + 2 * math.sqrt(det), 0.0))
    got = trace_sqrt_product(s1, s2)
    n1, n2 = float(torch.linalg.matrix_norm(s1, 2)), float(torch.linalg.matrix_norm(s2, 2))
    # tr(S1 S2) and det carry round-off eps n1 n2; through the square root that becomes
    # sqrt(eps n1 n2) absolute when tr + 2 sqrt(det) is near 0.
    tol = 50 * EPS * math.sqrt(n1 * n2) + 4 * math.sqrt(EPS * n1 * n2)
    assert abs(got - expected) <= tol, (got, expected, tol)


def test_commuting_covariances_with_zero_eigenvalues():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T share eigenvectors: the covariance part of the
    distance is sum_i (sqrt a_i - sqrt b_i)^2, zeros included (rank-deficient)."""
    d = 10
    q, _ = torch.linalg.qr(_randn(d, d, seed=3))
    a = torch.tensor([4.0, 1.0, 0.0, 0.0, 9.0, 0.25, 0.0, 2.0, 3.0, 1e-3], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0, 0.0, 5.0, 9.0, 1.0, 0.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu1, mu2 = _randn(d, seed=4), _randn(d, seed=5)
    expected = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    got = frechet_distance_from_stats(GaussianStats(mu1, s1, 2), GaussianStats(mu2, s2, 2))
    # Round-off: eigenvalues of the rotated matrices carry ~d eps max(a, b) absolute error;
    # through the square root of a zero eigenvalue that is sqrt(d eps max) per term.
    tol = d * math.sqrt(d * EPS * 9.0) * 3
    assert abs(got - expected) <= tol, (got, expected, tol)


def test_matches_scipy_sqrtm_on_full_rank():
    """An independent route (scipy's Schur-based sqrtm) on well-conditioned covariances."""
    d = 20
    x, y = _randn(500, d, seed=6), _randn(500, d, seed=7) @ _randn(d, d, seed=8) + 0.5
    # Statistics as the reference FID code computes them: np.mean and np.cov (divisor N - 1).
    mx, my = x.numpy().mean(0), y.numpy().mean(0)
    cx, cy = np.cov(x.numpy(), rowvar=False), np.cov(y.numpy(), rowvar=False)
    covmean = scipy.linalg.sqrtm(cx @ cy)
    ref = float(((mx - my) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * np.trace(covmean).real)
    got = frechet_distance(x, y)
    assert abs(got - ref) <= 1e-9 * (1 + abs(ref)), (got, ref)


@pytest.mark.parametrize("rank", [84, 40, 3])
def test_identical_sets_give_zero_to_round_off(rank):
    """FD(X, X) = 0; the bound is the round-off of tr S + tr S - 2 sum(singular values),
    about D eps (2 tr S). Rank-deficient covariances (LeNet features after a ReLU have dead
    units) included: the eigenvalue route would leave ~sqrt(eps) ||S|| D here."""
    d = 84
    x = _randn(2000, rank, seed=rank) @ _randn(rank, d, seed=rank + 1) * 3 + 5
    x[:, :5] = 0.0  # dead units: exactly zero variance
    s = gaussian_stats(x)
    got = frechet_distance(x, x)
    bound = 4 * d * EPS * 2 * float(torch.trace(s.cov))
    assert 0.0 <= got <= bound, (got, bound)


def test_sampling_bias_matches_stated_formula():
    """Two independent samples of N(0, I_D): E[FD] ~ (D + D(D+1)/4)(1/N1 + 1/N2) (docstring)."""
    d, n, reps = 3, 400, 120
    g = _gen(11)
    vals = torch.tensor([
        frechet_distance(torch.randn(n, d, generator=g, dtype=torch.float64),
                         torch.randn(n, d, generator=g, dtype=torch.float64))
        for _ in range(reps)
    ])
    predicted = (d + d * (d + 1) / 4) * 2 / n
    se = float(vals.std()) / math.sqrt(reps)
    # 4 standard errors (P(|z| > 4) = 6e-5 for a correct formula; the seed is fixed). The
    # O(1/N^2) terms the first-order formula leaves out are far below that: measured with 20,000
    # repetitions at this D, N, mean / predicted - 1 = 0.002 +- 0.004, while one SE here is
    # ~4.5 % of `predicted` (FD's std is ~0.5 x its mean, / sqrt(120)). A formula missing the
    # D(D+1)/4 covariance term predicts half the value and fails.
    mean = float(vals.mean())
    assert abs(mean - predicted) <= 4 * se, (mean, predicted, se)


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(_randn(10, 3), _randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(_randn(1, 3), _randn(10, 3))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        frechet_distance(_randn(10), _randn(10, 3))
    bad = _randn(10, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(bad, _randn(10, 3))


# --------------------------------------------------------------------------------------------
# Density and coverage
# --------------------------------------------------------------------------------------------
def brute_force_density_coverage(real: np.ndarray, fake: np.ndarray, k: int):
    """Naeem et al.'s definitions with full distance matrices (the prdc package's algorithm)."""
    drr = np.sqrt(((real[:, None, :] - real[None, :, :]) ** 2).sum(-1))
    radii = np.sort(drr, axis=1)[:, k]  # k-th neighbour, index 0 being the point itself
    drf = np.sqrt(((real[:, None, :] - fake[None, :, :]) ** 2).sum(-1))
    density = (drf < radii[:, None]).sum() / (k * fake.shape[0])
    coverage = (drf.min(axis=1) < radii).mean()
    return float(density), float(coverage)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(7, 40),
    m=st.integers(1, 40),
    d=st.integers(1, 6),
    k=st.integers(1, 5),
    offset=st.floats(0.0, 2.0),
    chunk=st.sampled_from([1, 7, 50, 2**22]),
)
def test_density_coverage_matches_brute_force(seed, n, m, d, k, offset, chunk):
    real = _randn(n, d, seed=seed) * 2 + 10  # offset from the origin: exercises the centring
    fake = _randn(m, d, seed=seed + 1) * 2 + 10 + offset
    got = density_coverage(real, fake, k, max_chunk_elements=chunk)
    ref_d, ref_c = brute_force_density_coverage(real.numpy(), fake.numpy(), k)
    assert got.density == pytest.approx(ref_d, abs=1e-12)
    assert got.coverage == pytest.approx(ref_c, abs=1e-12)
    assert (got.k, got.n_real, got.n_fake) == (k, n, m)


def test_identical_sets():
    """Fake = real: every real point covers itself (coverage 1), and each real ball holds
    exactly k points strictly inside its radius (itself and k - 1 neighbours), so density 1."""
    real = _randn(300, 8, seed=12)
    res = density_coverage(real, real.clone(), k=5)
    assert res.coverage == 1.0
    assert res.density == pytest.approx(1.0, abs=1e-12)


def test_far_away_fake_set():
    real = _randn(200, 4, seed=13)
    res = density_coverage(real, _randn(150, 4, seed=14) + 100.0, k=5)
    assert res.density == 0.0 and res.coverage == 0.0


def test_hand_computed_case():
    """Real points 0..5 on a line, k = 1: every radius is 1. A fake point at 0.5 lies strictly
    inside the balls of 0 and 1 (density 2/(1*1) = 2) and covers 2 of 6 real points."""
    real = torch.arange(6, dtype=torch.float64)[:, None]
    res = density_coverage(real, torch.tensor([[0.5]]), k=1)
    assert res.density == pytest.approx(2.0) and res.coverage == pytest.approx(2 / 6)
    # On the boundary (distance exactly 1 = radius) a ball does not count (open ball, '<').
    res = density_coverage(real, torch.tensor([[-1.0]]), k=1)
    assert res.density == 0.0 and res.coverage == 0.0


def test_chunks_never_exceed_the_budget(monkeypatch):
    seen = []
    original = metrics._sq_dists

    def spy(a, b, a2, b2):
        out = original(a, b, a2, b2)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(metrics, "_sq_dists", spy)
    real, fake = _randn(500, 3, seed=15), _randn(400, 3, seed=16)
    budget = 10_000
    chunked = density_coverage(real, fake, max_chunk_elements=budget)
    assert max(seen) <= budget and len(seen) > 2
    whole = density_coverage(real, fake)
    assert (chunked.density, chunked.coverage) == (whole.density, whole.coverage)


def test_density_coverage_bad_input():
    r = _randn(10, 3)
    with pytest.raises(ValueError, match="k must be"):
        density_coverage(r, r, k=0)
    with pytest.raises(ValueError, match="more than k = 5"):
        density_coverage(r[:5], r, k=5)
    with pytest.raises(ValueError, match="dimensions differ"):
        density_coverage(r, _randn(10, 2))
    with pytest.raises(ValueError, match="max_chunk_elements"):
        density_coverage(r, r, max_chunk_elements=0)


# --------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------
def test_entropy_known_values():
    uniform = torch.full((10,), 0.1)
    assert shannon_entropy(uniform) == pytest.approx(math.log(10), abs=1e-12)
    assert shannon_entropy(uniform, EntropyUnit.BITS) == pytest.approx(math.log2(10), abs=1e-12)
    assert shannon_entropy(torch.eye(10)[3]) == 0.0
    assert shannon_entropy(torch.tensor([0.5, 0.25, 0.25]), "bits") == pytest.approx(1.5, abs=1e-15)


@settings(max_examples=50, deadline=None)
@given(w=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=12).filter(lambda v: sum(v) > 1e-3))
def test_entropy_bounds_and_units(w):
    p = torch.tensor(w, dtype=torch.float64)
    p = p / p.sum()
    h = shannon_entropy(p)
    assert -1e-15 <= h <= math.log(len(w)) + 1e-12
    assert shannon_entropy(p, EntropyUnit.BITS) == pytest.approx(h / math.log(2), rel=1e-12, abs=1e-15)


def test_class_distribution_hard_and_soft():
    probs = torch.tensor([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]],
                         dtype=torch.float64)
    torch.testing.assert_close(class_distribution(probs, ClassDistribution.HARD),
                               torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(class_distribution(probs, "soft"),
                               torch.tensor([0.4, 0.325, 0.275], dtype=torch.float64))
    assert class_entropy(probs) == pytest.approx(math.log(2))
    # One-hot predictions spread evenly over 10 classes: the maximum, log 10.
    one_hot = torch.eye(10).repeat(7, 1)
    assert class_entropy(one_hot) == pytest.approx(math.log(10), abs=1e-12)
    assert class_entropy(one_hot[:7 * 1][:1].repeat(5, 1)) == 0.0


def test_entropy_bad_input():
    with pytest.raises(ValueError, match="'shannons'.*nats"):
        shannon_entropy(torch.full((2,), 0.5), "shannons")
    with pytest.raises(ValueError, match="sum to 1"):
        shannon_entropy(torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match="non-negative"):
        shannon_entropy(torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match="'median'.*hard"):
        class_entropy(torch.eye(3), kind="median")
    with pytest.raises(ValueError, match="probabilities"):
        class_entropy(torch.ones(3, 3))


# --------------------------------------------------------------------------------------------
# LeNet: features, files, training determinism, fid_lenet
# --------------------------------------------------------------------------------------------
def _images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=_gen(seed))


def test_lenet_shapes_and_input_checks():
    model = LeNet(seed=0)
    x = _images(5)
    assert lenet_features(model, x).shape == (5, 84)
    assert lenet_features(model, x[:, 0]).shape == (5, 84)  # (N, 28, 28) accepted
    p = lenet_probs(model, x, batch_size=2)
    assert p.shape == (5, 10) and torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64))
    # uint8 images are read as pixel/255.
    u8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(lenet_features(model, u8), lenet_features(model, u8.float() / 255))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lenet_features(model, x * 2 - 1)
    with pytest.raises(ValueError, match="shape"):
        lenet_features(model, torch.rand(5, 3, 28, 28))
    with pytest.raises(ValueError, match="batch_size"):
        lenet_features(model, x, batch_size=0)


def test_lenet_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = LeNet(seed=1), LeNet(seed=1), LeNet(seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_training_is_deterministic_and_learns():
    """Two runs with one seed give bit-identical weights; a separable toy task is learnt."""
    n = 256
    y = torch.arange(n) % 10
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):  # class c: a bright 4x4 block at a class-dependent position
        r, c = divmod(int(y[i]), 5)
        x[i, 0, 4 + 12 * r : 8 + 12 * r, 2 + 5 * c : 6 + 5 * c] = 1.0
    x = (x + 0.1 * torch.rand(n, 1, 28, 28, generator=_gen(1))).clamp(0, 1)
    cfg = LeNetTrainConfig(epochs=6, batch_size=32, lr=3e-3, seed=3)
    r1 = train_lenet(x, y, cfg)
    r2 = train_lenet(x, y, cfg)
    for p, q in zip(r1.model.state_dict().values(), r2.model.state_dict().values()):
        assert torch.equal(p, q)
    assert lenet_accuracy(r1.model, x, y) == 1.0
    assert len(r1.history) == 6 and r1.history[-1]["loss"] < r1.history[0]["loss"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored


def test_train_bad_input():
    with pytest.raises(ValueError, match="epochs"):
        LeNetTrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        LeNetTrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        train_lenet(_images(4), torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="labels must have shape"):
        train_lenet(_images(4), torch.tensor([0, 1, 2]))


def test_save_load_checksum(tmp_path):
    model = LeNet(seed=4)
    path = save_lenet(model, tmp_path / "sub" / "lenet.pt", {"test_accuracy": 0.5})
    sums = tmp_path / "sub" / "lenet.pt.sha256"
    assert sums.read_text().endswith("  lenet.pt\n")
    loaded = load_lenet(path)
    assert loaded.meta == {"test_accuracy": 0.5}
    x = _images(3)
    torch.testing.assert_close(lenet_features(loaded, x), lenet_features(model, x), rtol=0, atol=0)
    # Any change of the bytes is refused.
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_lenet(path)
    sums.unlink()
    with pytest.raises(FileNotFoundError, match="checksum"):
        load_lenet(path)
    with pytest.raises(FileNotFoundError, match="scorefpe lenet train"):
        load_lenet(tmp_path / "missing.pt")
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_cache_path_follows_env_default_is_shipped(monkeypatch, tmp_path):
    from scorefpe.metrics.lenet import cache_lenet_path, shipped_lenet_path

    monkeypatch.setenv("SCOREFPE_CACHE", str(tmp_path))
    assert cache_lenet_path() == tmp_path / "lenet" / "lenet.pt"
    assert default_lenet_path() == shipped_lenet_path()  # the cache does not change the default
    monkeypatch.delenv("SCOREFPE_CACHE")
    assert cache_lenet_path().parts[-3:] == ("scorefpe", "lenet", "lenet.pt")


def test_shipped_lenet_loads_checked_and_trained(tmp_path):
    """The package's weights load without any cache, match the published SHA-256, and are the
    trained network their record says (>= 99 % test accuracy, parameter digest recomputed)."""
    import shutil

    from scorefpe.metrics.lenet import (
        SHIPPED_LENET_SHA256,
        ChecksumError,
        file_sha256,
        shipped_lenet_path,
        weights_sha256,
    )

    path = shipped_lenet_path()
    assert path.is_file() and 100_000 < path.stat().st_size < 1_000_000
    assert file_sha256(path) == SHIPPED_LENET_SHA256
    model = load_lenet()
    assert model.meta["test_accuracy"] >= 0.99
    assert weights_sha256(model) == model.meta["weights_sha256"]
    assert weights_sha256(model) != weights_sha256(LeNet(seed=0))
    # A copy with one byte changed is refused against the published digest.
    bad = tmp_path / "lenet_mnist.pt"
    shutil.copy(path, bad)
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="expected " + SHIPPED_LENET_SHA256):
        load_lenet(bad, sha256=SHIPPED_LENET_SHA256)
    loaded = load_lenet(path, sha256=SHIPPED_LENET_SHA256.upper())
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lenet_features(loaded, x), lenet_features(model, x), rtol=0, atol=0)


def test_fid_lenet():
    model = LeNet(seed=5)
    x, y = _images(200, seed=6), _images(200, seed=7) * 0.5
    assert fid_lenet(x, x, model) <= 1e-9
    ref_stats = gaussian_stats(lenet_features(model, y))
    direct = frechet_distance(lenet_features(model, x), lenet_features(model, y))
    assert fid_lenet(x, y, model) == pytest.approx(direct, rel=1e-12)
    assert fid_lenet(x, ref_stats, model) == pytest.approx(direct, rel=1e-12)
    # Another batch size changes the float32 network's summation order: ~1e-7 relative per
    # feature, about 1e-6 relative in the distance.
    assert fid_lenet(x, ref_stats, model, batch_size=64) == pytest.approx(direct, rel=1e-5)
    assert direct > 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fid_lenet(x * 2 - 1, y, model)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _toy_split(split, data_dir):
    n = 200 if split == "train" else 50
    return _images(n, seed=0 if split == "train" else 1), torch.arange(n) % 10


def test_cli_train_and_eval(monkeypatch, tmp_path):
    from scorefpe.cli import lenet_cmd as cli_lenet
    from scorefpe.cli.main import main

    monkeypatch.setattr(cli_lenet, "_load_split", _toy_split)
    out = tmp_path / "m.pt"
    runner = CliRunner()
    # Random labels cannot reach 99 %: nothing is written and the exit code is 1.
    res = runner.invoke(main, ["lenet", "train", "--out", str(out), "--epochs", "1"])
    assert res.exit_code == 1, res.output
    assert not out.exists() and not list(tmp_path.iterdir())
    res = runner.invoke(main, ["lenet", "train", "--out", str(out), "--epochs", "1", "--min-accuracy", "0"])
    assert res.exit_code == 0, res.output
    assert out.exists() and (tmp_path / "m.pt.sha256").exists()
    assert "test accuracy" in res.output
    res = runner.invoke(main, ["lenet", "eval", "--model", str(out)])
    assert res.exit_code == 0 and "checksum OK" in res.output, res.output
    # Existing file without --force: exit 2, untouched.
    before = out.read_bytes()
    res = runner.invoke(main, ["lenet", "train", "--out", str(out), "--epochs", "1", "--min-accuracy", "0"])
    assert res.exit_code == 2 and "--force" in res.output
    assert out.read_bytes() == before
    # A corrupted file: exit 2 naming the checksum.
    out.write_bytes(before[:-1] + bytes([before[-1] ^ 1]))
    res = runner.invoke(main, ["lenet", "eval", "--model", str(out)])
    assert res.exit_code == 2 and "checksum mismatch" in res.output
    # Without --model: the shipped weights, found with an empty cache.
    from scorefpe.metrics.lenet import shipped_lenet_path

    res = runner.invoke(main, ["lenet", "eval", "--floor-n", "0"])
    assert res.exit_code == 0 and "checksum OK" in res.output, res.output
    assert str(shipped_lenet_path()) in res.output and "0.9924" in res.output


def test_cli_bad_input(tmp_path):
    from scorefpe.cli.main import main

    runner = CliRunner()
    res = runner.invoke(main, ["lenet", "train", "--epochs", "0"])
    assert res.exit_code == 2 and "--epochs" in res.output
    res = runner.invoke(main, ["lenet", "train", "--data-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope" in res.output
    res = runner.invoke(main, ["lenet", "eval", "--model", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "missing.pt" in res.output


def test_real_data_floor_of_identical_sets():
    # The test set against itself: FID 0 (round-off, as fid_lenet), every real ball holds its
    # own point so coverage is 1, and both entropies are the same number.
    model = LeNet(seed=5)
    x = _images(60, seed=6)
    fl = real_data_floor(model, x, x, k=3)
    assert fl.fid <= 1e-9 and fl.coverage == 1.0
    assert fl.entropy_real == fl.entropy_test and 0 <= fl.entropy_real <= math.log(10) + 1e-12
    assert (fl.n_real, fl.n_test, fl.k) == (60, 60, 3)
    other = real_data_floor(model, _images(60, seed=7) * 0.3, x, k=3)
    assert other.fid > 1e3 * max(fl.fid, 1e-12) and other.coverage < 1.0
    with pytest.raises(ValueError):
        real_data_floor(model, x[:1], x, k=3)  # one image: no covariance


def test_lenet_train_record():
    from scorefpe._util import cpu_name
    from scorefpe.metrics.lenet import LeNetTrainResult, weights_sha256

    model = LeNet(seed=2)
    hist = [{"epoch": 1, "loss": 1.0, "train_accuracy": 0.5, "seconds": 1.0, "eval_accuracy": 0.75}]
    cfg = LeNetTrainConfig(epochs=1)
    rec = lenet_train_record(LeNetTrainResult(model, hist), cfg, n_train=10, n_test=4, seconds=2.0)
    assert rec["test_accuracy"] == 0.75 and rec["n_train"] == 10 and rec["n_test"] == 4
    assert rec["config"]["epochs"] == 1 and rec["train_seconds"] == 2.0
    assert rec["cpu"] == cpu_name() and rec["weights_sha256"] == weights_sha256(model)
    with pytest.raises(ValueError, match="eval_accuracy"):
        lenet_train_record(LeNetTrainResult(model, [{"epoch": 1, "loss": 1.0}]), cfg, n_train=1,
                           n_test=1, seconds=0.0)
