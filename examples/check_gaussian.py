"""Check a hand-written score: a Gaussian's exact score, then the same with a rotation added.

The data are q_0 = N(mu, Sigma) in 2-D. Under a linear SDE, x(t) | x(0) ~ N(a x0, v I), so
q_t = N(a mu, C_t) with C_t = a^2 Sigma + v I and the exact score is

    s(x, t) = -C_t^{-1} (x - a mu)                   (symmetric Jacobian -C_t^{-1})

It satisfies the score FPE at every x, so r_FP is at round-off level wherever it is evaluated.
Adding a rotation lam R x (R = [[0, -1], [1, 0]]) gives a field that is no gradient: its Jacobian
has antisymmetric part lam R, so Asym = ||J - J^T||_F^2 / 2 = 4 lam^2 exactly, and r_FP > 0.

Run it:            python examples/check_gaussian.py
From the CLI:      scorefpe check --model examples/check_gaussian.py:rotated_score --sde vp --data gmm2d
(`gaussian_score` and `rotated_score` are factories taking the SDE, as `--model` accepts; the
Gaussian's score solves the score FPE at every x, so any --data works. `gmm2d_score` and
`gmm2d_rotated_score` are the same pair for the built-in gmm2d, whose true score the report then
also compares against.)
"""

from __future__ import annotations

import torch

from scorefpe.modelcheck import check_model, parse_t_grid
from scorefpe.sde import SDE, VPSDE, bcast

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
ROTATION = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
LAM = 0.5


def gaussian_score(sde: SDE):
    """The exact score of q_t for q_0 = N(MU, SIGMA): x (B, 2), t (B,) -> (B, 2)."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = sde.mean_coeff(t)
        v = sde.marginal_var(t)
        cov = a[:, None, None] ** 2 * SIGMA.to(x) + v[:, None, None] * torch.eye(2).to(x)
        diff = x - bcast(a, x) * MU.to(x)
        return -torch.linalg.solve(cov, diff[..., None])[..., 0]

    return score


def rotated_score(sde: SDE, lam: float = LAM):
    """gaussian_score plus lam R x: not a gradient field (Asym = 4 lam^2 at every x)."""
    exact = gaussian_score(sde)
    return lambda x, t: exact(x, t) + lam * x @ ROTATION.to(x).T


def gmm2d_score(sde: SDE):
    """The closed-form score of the built-in gmm2d data set (for ``--data gmm2d``)."""
    from scorefpe.data.synthetic import get_dataset

    return get_dataset("gmm2d").score_fn(sde)


def gmm2d_rotated_score(sde: SDE, lam: float = LAM):
    """gmm2d_score plus lam R x."""
    exact = gmm2d_score(sde)
    return lambda x, t: exact(x, t) + lam * x @ ROTATION.to(x).T


def sample_x0(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws of N(MU, SIGMA), float64 (n, 2)."""
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return MU + z @ torch.linalg.cholesky(SIGMA).T


def main(n_points: int = 64, t_grid: str = "1e-3:1:6", seed: int = 0, echo=print):
    sde = VPSDE()
    grid = parse_t_grid(t_grid)
    reports = {}
    for name, fn in (("exact", gaussian_score(sde)), ("rotated", rotated_score(sde))):
        gen = torch.Generator().manual_seed(seed)
        reports[name] = check_model(
            fn, sde, sample_x0, t_grid=grid, n_points=n_points, generator=gen,
            true_score_fn=gaussian_score(sde), meta={"model": f"gaussian ({name})"},
        )
        echo(f"\n## {name} score ({reports[name].meta['mode']})\n")
        echo(reports[name].table())
    exact_nasym = max(s.mean for s in reports["exact"].stats["nasym"])
    rot_nasym = min(s.mean for s in reports["rotated"].stats["nasym"])
    echo(f"\nNAsym: exact score <= {exact_nasym:.2e}, rotated score >= {rot_nasym:.3f}; "
         f"Asym of the rotation, exact: 4 lam^2 = {4 * LAM**2}")
    return reports


if __name__ == "__main__":
    main()
