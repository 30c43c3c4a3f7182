"""Count what each operator asks of a score function: calls and rows (batch entries) evaluated.

Run: python examples/count_evaluations.py
A row is one sample evaluated once; a forward-mode JVP evaluates its rows once with tangents
(about 2-3x the cost of a plain evaluation).
"""

import torch

from scorefpe import VPSDE, divergence, fp_operator, fp_residual, jacobian_asymmetry_sq, jacobian_frobenius_sq, time_derivative


def main(b: int = 8, d: int = 4) -> None:
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stats = {"calls": 0, "rows": 0}

    def score(x, t):
        stats["calls"] += 1
        stats["rows"] += x.shape[0]
        return torch.tanh(x @ a.T) * (1 + t[:, None])

    x = torch.randn(b, d, dtype=torch.float64)
    t = torch.full((b,), 0.5, dtype=torch.float64)
    sde = VPSDE()
    cases = {
        "divergence exact": lambda: divergence(score, x, t),
        "divergence hutchinson K=1": lambda: divergence(score, x, t, method="hutchinson"),
        "jacobian_frobenius_sq hutchinson K=1": lambda: jacobian_frobenius_sq(score, x, t, method="hutchinson"),
        "jacobian_asymmetry_sq hutchinson K=1": lambda: jacobian_asymmetry_sq(score, x, t, method="hutchinson"),
        "time_derivative exact": lambda: time_derivative(score, x, t),
        "time_derivative central": lambda: time_derivative(score, x, t, method="central"),
        "time_derivative nonuniform": lambda: time_derivative(score, x, t, method="nonuniform"),
        "fp_operator exact": lambda: fp_operator(score, sde, x, t),
        "fp_residual exact": lambda: fp_residual(score, sde, x, t),
        "fp_residual estimated K=1": lambda: fp_residual(score, sde, x, t, method="estimated"),
    }
    print(f"B = {b}, D = {d}")
    print(f"{'operator':40s} {'calls':>5s} {'rows':>6s} {'rows / B':>8s}")
    for name, fn in cases.items():
        stats.update(calls=0, rows=0)
        fn()
        print(f"{name:40s} {stats['calls']:5d} {stats['rows']:6d} {stats['rows'] / b:8.1f}")


if __name__ == "__main__":
    main()
