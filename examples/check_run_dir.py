"""Check a run directory trained by `scorefpe train`.

A run directory is loaded through one documented hook, `scorefpe.modelcheck.load_run_dir`:

1. a directory with `config.json` (the `scorefpe train mnist` format) is loaded by
   `scorefpe.training.load_run(run_dir)`, which also gives the run's SDE and config; the points
   then come from the data the run was trained on (the MNIST test digits for an MNIST run)
   unless `--data` says otherwise;
2. otherwise `run_dir/model.pt2` (a `torch.export` program) or `run_dir/model.pt` (TorchScript)
   is loaded, the SDE is VP and `--data` is needed.

Run it:        python examples/check_run_dir.py RUN_DIR [--param eps] [--data mnist]
From the CLI:  scorefpe check --model RUN_DIR --data mnist
"""

from __future__ import annotations

import argparse

import torch

from scorefpe.modelcheck import check_model, data_sampler, load_run_dir, parse_t_grid, to_score_fn
from scorefpe.sde import VPSDE


def main(run_dir: str, *, param: str = "score", data: str | None = None, n_points: int = 64,
         t_grid: str = "1e-3:1:6", seed: int = 0, echo=print):
    loaded = load_run_dir(run_dir, VPSDE())
    sde = loaded.sde or VPSDE()
    data = data or loaded.data
    if data is None:
        raise SystemExit(f"{run_dir}: the run does not name its data; pass --data (e.g. gmm2d, "
                         "mnist or a .npy file)")
    src = data_sampler(data)
    report = check_model(  # dtype: the network's own (float32 for a `scorefpe train` U-Net)
        to_score_fn(loaded.model, sde, param), sde, src.sample,
        t_grid=parse_t_grid(t_grid, sde.T), n_points=n_points,
        generator=torch.Generator().manual_seed(seed),
        true_score_fn=src.truth(sde) if src.truth else None,
        meta={"model": f"run dir {run_dir}", "param": param, "x0_source": data},
    )
    echo(report.to_markdown())
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--param", default="score")
    ap.add_argument("--data", default=None, help="default: the run's own data (MNIST runs)")
    ap.add_argument("--n-points", type=int, default=64)
    ap.add_argument("--t-grid", default="1e-3:1:6")
    args = ap.parse_args()
    main(args.run_dir, param=args.param, data=args.data, n_points=args.n_points, t_grid=args.t_grid)
