"""Cost of torch's forward-mode AD (torch.func.jvp) against a plain forward and against a
reverse-mode VJP, per layer type of the ScoreNet U-Net, on this machine.

Why this exists: the operators take J^T v (reverse mode) for the Hutchinson estimators although
a JVP would be the textbook choice; this script is the measurement behind that decision
(docs/results/bench_penalties_cpu.md). Ratios are within one process, the variants interleaved,
median of --repeats timings.

    OMP_NUM_THREADS=1 python scripts/bench_forward_mode.py --repeats 21
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    layers = {
        "conv 3x3, 32->64, 28x28": (nn.Conv2d(32, 64, 3, padding=1), (args.batch, 32, 28, 28)),
        "transposed conv 3x3, 64->32, 14->28": (
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
            (args.batch, 64, 14, 14)),
        "GroupNorm(4, 64), 28x28": (nn.GroupNorm(4, 64), (args.batch, 64, 28, 28)),
    }
    print(f"torch {torch.__version__}, 1 thread, batch {args.batch}, median of {args.repeats}")
    print("| layer | forward ms | jvp ms | jvp / forward | forward+vjp ms | (fwd+vjp) / forward |")
    print("|---|---|---|---|---|---|")
    for name, (layer, shape) in layers.items():
        x = torch.randn(shape)
        v = torch.randn(shape)
        for p in layer.parameters():
            p.requires_grad_(False)

        def fwd():
            with torch.no_grad():
                layer(x)

        def jvp():
            torch.func.jvp(layer, (x,), (v,))

        def vjp():
            y, f = torch.func.vjp(layer, x)
            f(torch.ones_like(y))

        for f in (fwd, jvp, vjp):  # warm-up
            f()
        times = {"fwd": [], "jvp": [], "vjp": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
            for k, f in (("fwd", fwd), ("jvp", jvp), ("vjp", vjp)):
                times[k] += _time(f, 1)
        m = {k: 1e3 * statistics.median(v_) for k, v_ in times.items()}
        print(f"| {name} | {m['fwd']:.2f} | {m['jvp']:.2f} | {m['jvp'] / m['fwd']:.1f}x | "
              f"{m['vjp']:.2f} | {m['vjp'] / m['fwd']:.1f}x |")


if __name__ == "__main__":
    main()
