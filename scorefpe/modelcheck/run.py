"""One `scorefpe check --model` run end to end: load the model, draw x0, compute the report,
print it and write its files (issue 9; the CLI in `scorefpe.cli.modelcheck_cmd` only parses options).

Bad input raises ValueError naming the problem (the CLI turns it into exit code 2); a solver or
model failure mid-run raises RuntimeError. Files are written only after everything was computed,
each atomically, so a failure leaves no partial set behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from scorefpe._util import atomic_write_bytes, cpu_name
from scorefpe.modelcheck.compute import check_model, parse_t_grid
from scorefpe.modelcheck.loading import load_model, model_dtype, probe_model
from scorefpe.modelcheck.params import Param, to_score_fn
from scorefpe.modelcheck.report import ModelReport
from scorefpe.modelcheck.sources import data_sampler, model_sampler
from scorefpe.sde import SDE, make_sde

# --dtype choices: "auto" is the model's parameter dtype, else float64 (`model_dtype`).
DTYPES: dict[str, torch.dtype | None] = {"auto": None, "float32": torch.float32,
                                         "float64": torch.float64}
REPORT_FILES = ("report.json", "report.csv", "report.md", "report.png")


def parse_shape(shape: str | None) -> tuple[int, ...] | None:
    """Per-sample shape from "2", "1,28,28" or "1x28x28"; None stays None.

    Raises:
        ValueError: not a list of positive integers.
    """
    if shape is None:
        return None
    try:
        dims = tuple(int(s) for s in shape.replace("x", ",").split(",") if s.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"--shape {shape!r}: expected sizes like 2 or 1,28,28")
    return dims


def sde_with_params(name: str, params: dict[str, float | None]) -> SDE:
    """The SDE `name` with the parameters given (a None value: that parameter's default).

    Raises:
        ValueError: a parameter the SDE does not take, or a bad value.
    """
    given = {k: v for k, v in params.items() if v is not None}
    try:
        return make_sde(name, **given)
    except TypeError:
        raise ValueError(
            f"SDE {name!r} does not take parameters {sorted(given)} (vp: --beta-min/--beta-max, "
            "ve: --sigma-min/--sigma-max)"
        ) from None


def check_model_spec(
    model: str,
    sde: SDE,
    param: Param,
    *,
    data: str | None = None,
    t_grid: str = "1e-3:1:12",
    n_points: int = 64,
    n_probes: int = 4,
    seed: int = 0,
    mode: str = "auto",
    shape: str | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device = torch.device("cpu"),
    batch_size: int = 64,
    time_method: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    t_start: float | None = None,
) -> ModelReport:
    """Load `model` (a spec of `load_model`), draw x0 from `data` or, without it, from the
    model itself by the probability-flow ODE (needs `shape`), and compute the score-FPE report
    on the log-spaced `t_grid` with `n_points` points per t and `n_probes` probes per point;
    print the table with `echo`. All randomness comes from one generator seeded with `seed`.

    dtype None: the model's parameter dtype, else float64. time_method None: forward-mode d_t s
    (`check_model`'s default). Cost: that of `check_model`, plus `n_points` ODE solves without data.
    `t_start` (a `time.perf_counter()` value) starts the printed wall time; default now.

    Raises:
        ValueError: bad t grid, model spec, data name or shape, or a model that does not fit.
        RuntimeError: an ODE solver failure or a model error mid-run.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter() if t_start is None else t_start
    grid = parse_t_grid(t_grid, sde.T)
    loaded = load_model(model, sde)
    if loaded.sde is not None:
        sde = loaded.sde
    dt = dtype or model_dtype(loaded.model)
    score_fn = to_score_fn(loaded.model, sde, param)
    gen = torch.Generator().manual_seed(seed)
    truth = None
    if data is not None:
        src = data_sampler(data)
        sample_x0 = src.sample
        truth = src.truth(sde) if src.truth is not None else None
        x0_source = f"data {data}"
    else:
        dims = parse_shape(shape)
        if dims is None:
            raise ValueError(
                "without --data give --shape (per-sample shape, e.g. 2 or 1,28,28) so that "
                "the model's own samples can be drawn by the probability-flow ODE"
            )
        xt = sde.prior_sample((4, *dims), generator=gen, dtype=dt, device=device)
        probe_model(score_fn, xt, torch.full((4,), sde.T, dtype=dt, device=device))
        echo(f"sampling {n_points} x0 from the model by the probability-flow ODE ...")
        sample_x0 = model_sampler(score_fn, sde, dims, n_pool=n_points, t_min=grid[0],
                                  generator=gen, dtype=dt, device=device, batch_size=batch_size,
                                  progress=progress)
        x0_source = "model samples (probability-flow ODE)"
    meta = dict(model=model, sde=repr(sde), param=param.value, x0_source=x0_source,
                seed=seed, machine=cpu_name() if device.type == "cpu" else str(device))
    with tqdm(total=len(grid) * n_points, desc="model check", unit="pt",
              disable=not progress) as bar:
        report = check_model(
            score_fn, sde, sample_x0, t_grid=grid, n_points=n_points, n_probes=n_probes,
            generator=gen, mode=mode, true_score_fn=truth, compute_dsm=data is not None,
            batch_size=batch_size, dtype=dt, device=device, time_method=time_method,
            progress=lambda done, total: bar.update(done - bar.n), meta=meta,
        )
    elapsed = time.perf_counter() - t_start
    m = report.meta
    echo(f"scorefpe check --model {model}: sde={m['sde']} param={param.value} D={m['dim']} "
         f"x0={x0_source} dtype={m['dtype']}")
    echo(f"mode: {m['mode']}")
    echo(report.table())
    probes_txt = "exact (no probes)" if m["exact"] else f"{n_probes} probes per point and quantity"
    echo(f"{n_points} points per t, {probes_txt}; CI = mean ± 1.96 SE; time {elapsed:.1f} s")
    return report


def write_report_files(report: ModelReport, out: str | os.PathLike) -> list[Path]:
    """Write report.json/.csv/.md/.png into directory `out` (created if missing); return the
    paths. The figure is rendered before anything is written, and each file is written
    atomically, so a failure leaves no partial set of files behind.

    Raises:
        ValueError: `out` exists and is not a directory.
    """
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    fd, tmp_png = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        report.plot(tmp_png)
        png = Path(tmp_png).read_bytes()
    finally:
        os.unlink(tmp_png)
    contents = {"report.json": report.to_json(), "report.csv": report.to_csv(),
                "report.md": report.to_markdown(), "report.png": png}
    paths = []
    for name in REPORT_FILES:
        content = contents[name]
        atomic_write_bytes(d / name, content.encode() if isinstance(content, str) else content)
        paths.append(d / name)
    return paths
