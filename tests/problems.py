"""Analytic problems shared by the tests: fields whose derivatives and residuals are known exactly."""

from __future__ import annotations

import torch

DT = torch.float64


def linear_field(a: torch.Tensor, b: torch.Tensor):
    """s(x, t) = A x + b (time-independent): J = A, div = tr A, ||J - J^T|| = ||A - A^T||."""

    def fn(x, t):
        return x @ a.T.to(x) + b.to(x)

    return fn


def timevarying_linear(a0, a1, b0, b1):
    """s(x, t) = (A0 + t A1) x + (b0 + t b1): a non-score field with a closed-form residual."""

    def fn(x, t):
        a = a0[None] + t[:, None, None] * a1[None]
        return torch.einsum("bij,bj->bi", a, x) + b0[None] + t[:, None] * b1[None]

    def residual(sde, x, t):
        # eps = A' x + b' - g^2 A^T (A x + b) + c (A + A^T) x + c b, with f = c x, c = drift_coeff.
        a = a0[None] + t[:, None, None] * a1[None]
        b = b0[None] + t[:, None] * b1[None]
        s = torch.einsum("bij,bj->bi", a, x) + b
        g2 = sde.diffusion(t) ** 2
        c = sde.drift_coeff(t)
        dts = x @ a1.T + b1[None]
        at_s = torch.einsum("bji,bj->bi", a, s)
        sym_x = torch.einsum("bij,bj->bi", a + a.transpose(1, 2), x)
        return dts - g2[:, None] * at_s + c[:, None] * sym_x + c[:, None] * b

    return fn, residual


def random_spd(d: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    m = torch.randn(d, d, generator=g, dtype=DT)
    return scale * (m @ m.T / d + 0.1 * torch.eye(d, dtype=DT))


def write_mnist_test_idx(cache, n: int = 8, seed: int = 0):
    """A small real-format MNIST test split (IDX, gzip) of n random digits under cache/mnist, so
    that a test needing `scorefpe.data.mnist` runs on any machine; returns the cache path."""
    import numpy as np

    from scorefpe.data.idx import write_idx

    (cache / "mnist").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_idx(cache / "mnist" / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(cache / "mnist" / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return cache
