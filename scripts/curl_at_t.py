"""Print the curl MSE curve of a synthetic benchmark at chosen times: for each (data set, model)
of OUT/curl_curves.csv, the mean over seeds of the curve at the grid point nearest each t, and
the ratio of each model to DSM. Used for the "where the curl lives" numbers of
docs/results/synthetic.md.

    python scripts/curl_at_t.py OUT/curl_curves.csv [1e-3 1e-2 0.1 0.5]
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict


def main(path: str, times: list[float]) -> None:
    curves: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            curves[(row["dataset"], row["model"])][row["seed"]].append(
                (float(row["t"]), float(row["mean"])))
    at: dict[tuple[str, str], list[float]] = {}
    for key, seeds in curves.items():
        vals = []
        for t in times:
            per_seed = [min(c, key=lambda p: abs(p[0] - t))[1] for c in seeds.values()]
            vals.append(sum(per_seed) / len(per_seed))
        at[key] = vals
    print("data set | model | " + " | ".join(f"t = {t:g}" for t in times) + " | ratio DSM / model")
    for (d, m), vals in at.items():
        base = at.get((d, "DSM"))
        ratio = "-" if base is None or m in ("DSM", "closed form") else ", ".join(
            f"{b / v:.2g}" if v > 0 else "inf" for b, v in zip(base, vals))
        print(f"{d} | {m} | " + " | ".join(f"{v:.3g}" for v in vals) + f" | {ratio}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], [float(a) for a in sys.argv[2:]] or [1e-3, 1e-2, 0.1, 0.5])
