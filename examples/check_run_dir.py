"""Check a run directory trained by `scorefpe train`.

A run directory is loaded through one documented hook, `scorefpe.modelcheck.load_run_dir`:

1. if the training package provides `scorefpe.training.load_run(run_dir)` (returning
   `(model, sde)` or an object with `.model` and `.sde`), that is used;
2. otherwise `run_dir/model.pt`, a TorchScript module, is loaded and the SDE comes from the
   caller (`--sde` on the command line).

The training checkpoint format is not final yet, so (1) may not exist in your version; (2) works
for any model you export with `torch.jit.save(torch.jit.script(model), run_dir / "model.pt")`.

Run it:        python examples/check_run_dir.py RUN_DIR [--param eps]
From the CLI:  scorefpe check --model RUN_DIR --sde vp --data gmm2d
"""

from __future__ import annotations

import argparse

import torch

from scorefpe.modelcheck import check_model, data_sampler, load_run_dir, parse_t_grid, to_score_fn
from scorefpe.sde import VPSDE


def main(run_dir: str, *, param: str = "score", data: str = "gmm2d", n_points: int = 64,
         t_grid: str = "1e-3:1:6", seed: int = 0, echo=print):
    loaded = load_run_dir(run_dir, VPSDE())
    sde = loaded.sde or VPSDE()
    src = data_sampler(data)
    dtype = next((p.dtype for p in getattr(loaded.model, "parameters", lambda: [])()
                  if p.is_floating_point()), torch.float64)
    report = check_model(
        to_score_fn(loaded.model, sde, param), sde, src.sample, t_grid=parse_t_grid(t_grid),
        n_points=n_points, generator=torch.Generator().manual_seed(seed), dtype=dtype,
        true_score_fn=src.truth(sde) if src.truth else None,
        meta={"model": f"run dir {run_dir}", "param": param, "x0_source": data},
    )
    echo(report.to_markdown())
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--param", default="score")
    ap.add_argument("--data", default="gmm2d")
    ap.add_argument("--n-points", type=int, default=64)
    args = ap.parse_args()
    main(args.run_dir, param=args.param, data=args.data, n_points=args.n_points)
