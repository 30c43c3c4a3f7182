"""Count what each operator asks of a score function: calls and rows (batch entries) evaluated.

Run: python examples/count_evaluations.py
A row is one sample evaluated once; a forward-mode JVP evaluates its rows once with tangents
(about 2-3x the cost of a plain evaluation). t = 0.5 lies inside [t_min, T] = [0, 1], which is
passed explicitly, so every finite-difference stencil is the interior one (a stencil that would
leave [t_min, T] is replaced by a one-sided one with other nodes).
"""

import torch

from scorefpe import VPSDE, divergence, fp_operator, fp_residual, jacobian_asymmetry_sq, jacobian_frobenius_sq, time_derivative


def counts(b: int = 8, d: int = 4) -> dict[str, tuple[int, int]]:
    """{operator: (calls, rows)} for a batch of b samples of dimension d, K = 1 probe."""
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stats = {"calls": 0, "rows": 0}

    def score(x, t):
        stats["calls"] += 1
        stats["rows"] += x.shape[0]
        return torch.tanh(x @ a.T) * (1 + t[:, None])

    x = torch.randn(b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((b,), 0.5, dtype=torch.float64)
    sde = VPSDE()
    t_min = 0.0
    cases = {
        "divergence exact": lambda: divergence(score, x, t),
        "divergence hutchinson K=1": lambda: divergence(score, x, t, method="hutchinson"),
        "jacobian_frobenius_sq hutchinson K=1": lambda: jacobian_frobenius_sq(score, x, t, method="hutchinson"),
        "jacobian_asymmetry_sq hutchinson K=1": lambda: jacobian_asymmetry_sq(score, x, t, method="hutchinson"),
        "time_derivative exact": lambda: time_derivative(score, x, t, t_min=t_min),
        "time_derivative central": lambda: time_derivative(score, x, t, method="central", t_min=t_min),
        "time_derivative nonuniform": lambda: time_derivative(score, x, t, method="nonuniform", t_min=t_min),
        "fp_operator exact": lambda: fp_operator(score, sde, x, t),
        "fp_residual exact": lambda: fp_residual(score, sde, x, t, t_min=t_min),
        "fp_residual estimated K=1": lambda: fp_residual(score, sde, x, t, method="estimated", t_min=t_min),
    }
    out = {}
    for name, fn in cases.items():
        stats.update(calls=0, rows=0)
        fn()
        out[name] = (stats["calls"], stats["rows"])
    return out


def main(b: int = 8, d: int = 4) -> None:
    print(f"B = {b}, D = {d}")
    print(f"{'operator':40s} {'calls':>5s} {'rows':>6s} {'rows / B':>8s}")
    for name, (calls, rows) in counts(b, d).items():
        print(f"{name:40s} {calls:5d} {rows:6d} {rows / b:8.1f}")


if __name__ == "__main__":
    main()
