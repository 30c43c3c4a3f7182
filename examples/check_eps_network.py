"""Check an eps-prediction network: `--param eps` turns it into a score, s = -eps_hat / std(t).

Two models of the same data (q_0 = N(MU, SIGMA) of check_gaussian.py):

- `exact_eps_net(sde)`: an nn.Module predicting E[z | x(t)] = std(t) C_t^{-1} (x - a mu) exactly
  (C_t = a^2 SIGMA + v I). Converted to a score it is the exact score: r_FP and the distance to
  the true score are at round-off, NAsym is zero.
- `trained_eps_mlp(sde)`: a small MLP eps(x, t) trained for a few hundred DSM steps. Being
  unconstrained, it is neither a gradient field nor a solution of the score FPE: the report
  shows by how much, per t.

Run it:        python examples/check_eps_network.py
From the CLI:  scorefpe check --model examples/check_eps_network.py:exact_eps_net --param eps \
                   --sde vp --data gmm2d
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from scorefpe.modelcheck import check_model, parse_t_grid, to_score_fn
from scorefpe.sde import SDE, VPSDE, bcast

try:  # the sibling example, whether run as a script or imported by path
    from check_gaussian import MU, SIGMA, gaussian_score, sample_x0
except ImportError:  # pragma: no cover - imported from elsewhere
    import importlib.util
    import sys

    _spec = importlib.util.spec_from_file_location(
        "check_gaussian", Path(__file__).with_name("check_gaussian.py")
    )
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["check_gaussian"] = _mod
    _spec.loader.exec_module(_mod)
    MU, SIGMA, gaussian_score, sample_x0 = _mod.MU, _mod.SIGMA, _mod.gaussian_score, _mod.sample_x0


class ExactEpsNet(nn.Module):
    """eps_hat(x, t) = std(t) C_t^{-1} (x - a(t) mu): the posterior mean of the noise."""

    def __init__(self, sde: SDE) -> None:
        super().__init__()
        self.sde = sde
        self.register_buffer("mu", MU.clone())
        self.register_buffer("sigma", SIGMA.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, v = self.sde.mean_coeff(t), self.sde.marginal_var(t)
        cov = a[:, None, None] ** 2 * self.sigma.to(x) + v[:, None, None] * torch.eye(2).to(x)
        diff = x - bcast(a, x) * self.mu.to(x)
        return bcast(v.sqrt(), x) * torch.linalg.solve(cov, diff[..., None])[..., 0]


def exact_eps_net(sde: SDE) -> nn.Module:
    return ExactEpsNet(sde).double()


class EpsMLP(nn.Module):
    """eps(x, t) = MLP([x, sin/cos(2 pi k t)]) for x of shape (B, 2)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 + 8, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, 5, dtype=x.dtype, device=x.device)
        emb = torch.cat([torch.sin(2 * math.pi * k * t[:, None]), torch.cos(2 * math.pi * k * t[:, None])], 1)
        return self.net(torch.cat([x, emb], 1))


def trained_eps_mlp(sde: SDE, steps: int = 300, seed: int = 0) -> nn.Module:
    """An EpsMLP trained by the eps-form DSM loss E||eps(x(t), t) - z||^2 for ``steps`` steps."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # parameter init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = EpsMLP().double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x0 = sample_x0(256, gen)
        t = 1e-3 + (1 - 1e-3) * torch.rand(256, generator=gen, dtype=torch.float64)
        x, z = sde.perturb(x0, t, gen)
        loss = (model(x, t) - z).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main(n_points: int = 64, t_grid: str = "1e-2:1:5", train_steps: int = 300, seed: int = 0,
         echo=print):
    sde = VPSDE()
    grid = parse_t_grid(t_grid)
    reports = {}
    for name, net in (("exact eps", exact_eps_net(sde)),
                      ("trained MLP eps", trained_eps_mlp(sde, steps=train_steps, seed=seed))):
        gen = torch.Generator().manual_seed(seed)
        reports[name] = check_model(
            to_score_fn(net, sde, "eps"), sde, sample_x0, t_grid=grid, n_points=n_points,
            generator=gen, true_score_fn=gaussian_score(sde), meta={"model": name, "param": "eps"},
        )
        echo(f"\n## {name}\n")
        echo(reports[name].table())
    return reports


if __name__ == "__main__":
    main()
