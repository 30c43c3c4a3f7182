"""`scorefpe check --model ...`: the score-FPE report of a user's own score model (issue 9).

Folding into `scorefpe/cli/check.py` (which already has --sde and --seed)::

    from scorefpe.cli.modelcheck import add_model_options, model_option_names, run_model_check

    @click.command()
    ...existing options...
    @add_model_options(skip=("sde", "seed"))
    def check(dataset, sde_name, seed, ..., **model_kw):
        if model_kw["model"] is not None:
            run_model_check(sde=sde_name, seed=seed, **model_kw)
            return
        ...the battery...

`run_model_check` / `model_check_command` raise click.UsageError (exit 2) on bad input.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch

from scorefpe.cli._options import resolve_device_option
from scorefpe._util import atomic_write_bytes, cpu_name
from scorefpe.sde import SDES

DTYPES = {"auto": None, "float32": torch.float32, "float64": torch.float64}


def _parse_shape(shape: str | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    try:
        dims = tuple(int(s) for s in shape.replace("x", ",").split(",") if s.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"{shape!r}: expected sizes like 2 or 1,28,28", param_hint="--shape")
    return dims


def sde_from_options(sde: Any, sde_params: dict[str, float | None]):
    """The SDE named by --sde with the --beta-*/--sigma-* values given (None: the default);
    click.UsageError (exit 2) naming a parameter the SDE does not take or a bad value."""
    from scorefpe.sde import SDE, make_sde

    if isinstance(sde, SDE):
        return sde
    given = {k: v for k, v in sde_params.items() if v is not None}
    try:
        return make_sde(str(sde), **given)
    except TypeError:
        raise click.UsageError(
            f"SDE {sde!r} does not take parameters {sorted(given)} (vp: --beta-min/--beta-max, "
            "ve: --sigma-min/--sigma-max)"
        ) from None
    except ValueError as err:
        raise click.UsageError(str(err)) from err


def model_check_command(
    model: str,
    sde: Any = "vp",
    param: str = "score",
    data: str | None = None,
    t_grid: str = "1e-3:1:12",
    n_points: int = 64,
    n_probes: int = 4,
    out: str | None = None,
    seed: int = 0,
    *,
    mode: str = "auto",
    shape: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 64,
    time_method: str = "default",
    beta_min: float | None = None,
    beta_max: float | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = click.echo,
) -> "object":
    """Run the model check from parsed option values: load, probe, compute, print, write files.

    Bad input raises click.UsageError (exit 2) naming the problem; files are written only after
    everything was computed, each atomically. Returns the ModelReport.
    """
    from tqdm.auto import tqdm

    from scorefpe.modelcheck import (
        check_model,
        data_sampler,
        load_model,
        model_dtype,
        model_sampler,
        parse_param,
        parse_t_grid,
        probe_model,
        to_score_fn,
    )

    t_start = time.perf_counter()
    try:
        p = parse_param(param)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    if dtype not in DTYPES:
        raise click.UsageError(f"unknown --dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    dev = resolve_device_option(device)
    the_sde = sde_from_options(sde, dict(beta_min=beta_min, beta_max=beta_max, sigma_min=sigma_min,
                                  sigma_max=sigma_max))
    try:
        grid = parse_t_grid(t_grid, the_sde.T)
        loaded = load_model(model, the_sde)
        if loaded.sde is not None:
            the_sde = loaded.sde
        dt = DTYPES[dtype] or model_dtype(loaded.model)
        score_fn = to_score_fn(loaded.model, the_sde, p)
        gen = torch.Generator().manual_seed(seed)
        truth = None
        if data is not None:
            src = data_sampler(data)
            sample_x0 = src.sample
            truth = src.truth(the_sde) if src.truth is not None else None
            x0_source = f"data {data}"
        else:
            dims = _parse_shape(shape)
            if dims is None:
                raise click.UsageError(
                    "without --data give --shape (per-sample shape, e.g. 2 or 1,28,28) so that "
                    "the model's own samples can be drawn by the probability-flow ODE"
                )
            xt = the_sde.prior_sample((4, *dims), generator=gen, dtype=dt, device=dev)
            probe_model(score_fn, xt, torch.full((4,), the_sde.T, dtype=dt, device=dev))
            echo(f"sampling {n_points} x0 from the model by the probability-flow ODE ...")
            sample_x0 = model_sampler(score_fn, the_sde, dims, n_pool=n_points, t_min=grid[0],
                                      generator=gen, dtype=dt, device=dev, batch_size=batch_size,
                                      progress=progress)
            x0_source = "model samples (probability-flow ODE)"
        meta = dict(model=model, sde=repr(the_sde), param=p.value, x0_source=x0_source,
                    seed=seed, machine=cpu_name() if dev.type == "cpu" else str(dev))
        with tqdm(total=len(grid) * n_points, desc="model check", unit="pt",
                  disable=not progress) as bar:
            report = check_model(
                score_fn, the_sde, sample_x0, t_grid=grid, n_points=n_points, n_probes=n_probes,
                generator=gen, mode=mode, true_score_fn=truth, compute_dsm=data is not None,
                batch_size=batch_size, dtype=dt, device=dev,
                time_method=None if time_method == "default" else time_method,
                progress=lambda done, total: bar.update(done - bar.n), meta=meta,
            )
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    except RuntimeError as err:  # e.g. an ODE solver failure or a model error mid-run
        raise click.ClickException(f"{type(err).__name__}: {err}") from err
    elapsed = time.perf_counter() - t_start
    m = report.meta
    echo(f"scorefpe check --model {model}: sde={m['sde']} param={p.value} D={m['dim']} "
         f"x0={x0_source} dtype={m['dtype']}")
    echo(f"mode: {m['mode']}")
    echo(report.table())
    probes_txt = "exact (no probes)" if m["exact"] else f"{n_probes} probes per point and quantity"
    echo(f"{n_points} points per t, {probes_txt}; CI = mean ± 1.96 SE; time {elapsed:.1f} s")
    if out is not None:
        d = Path(out)
        if d.exists() and not d.is_dir():
            raise click.UsageError(f"--out {out!r} exists and is not a directory")
        # Render everything first so that a failure leaves no partial set of files behind.
        fd, tmp_png = tempfile.mkstemp(suffix=".png")
        os.close(fd)
        try:
            report.plot(tmp_png)
            png = Path(tmp_png).read_bytes()
        finally:
            os.unlink(tmp_png)
        files = {"report.json": report.to_json(), "report.csv": report.to_csv(),
                 "report.md": report.to_markdown(), "report.png": png}
        for name, content in files.items():
            atomic_write_bytes(d / name, content.encode() if isinstance(content, str) else content)
        echo(f"wrote {', '.join(str(d / n) for n in files)}")
    return report


def model_options(skip: tuple[str, ...] = ()) -> list[Callable]:
    """The click options of the model check, as decorators; ``skip`` drops options the host
    command already has (e.g. ("sde", "seed") when `check` defines --sde and --seed itself)."""
    opts = {
        "model": click.option("--model", "model", default=None, metavar="SPEC",
                              help="MODULE:ATTR, path/to/file.py:ATTR, FILE.pt2 (torch.export), "
                                   "FILE.pt (TorchScript) or a run directory; a score_fn(x, t), "
                                   "nn.Module or factory. Runs that code."),
        "sde": click.option("--sde", "sde", type=click.Choice(list(SDES)),
                            default="vp", show_default=True),
        "beta_min": click.option("--beta-min", type=float, default=None, help="VP beta_min."),
        "beta_max": click.option("--beta-max", type=float, default=None, help="VP beta_max."),
        "sigma_min": click.option("--sigma-min", type=float, default=None, help="VE sigma_min."),
        "sigma_max": click.option("--sigma-max", type=float, default=None, help="VE sigma_max."),
        "param": click.option("--param", default="score", show_default=True,
                              help="Model output: score | eps | x0 | v (aliases: epsilon, "
                                   "sample, v_prediction)."),
        "data": click.option("--data", default=None,
                             help="x0 source: gmm1d/gmm2d/gmm8/checkerboard/swissroll, mnist, or "
                                  "FILE.npy; default: the model's own samples (needs --shape)."),
        "shape": click.option("--shape", default=None,
                              help="Per-sample shape when sampling from the model, e.g. 1,28,28."),
        "t_grid": click.option("--t-grid", default="1e-3:1:12", show_default=True,
                               help="start:stop:count (log-spaced) or a comma list of times."),
        "n_points": click.option("--n-points", type=click.IntRange(min=2), default=64,
                                 show_default=True, help="Points per t."),
        "n_probes": click.option("--n-probes", type=click.IntRange(min=1), default=4,
                                 show_default=True, help="Hutchinson probes per point (estimated mode)."),
        "mode": click.option("--mode", type=click.Choice(["auto", "exact", "estimated"]),
                             default="auto", show_default=True,
                             help="auto: exact derivatives where D <= 16."),
        "time_method": click.option(
            "--time-method", type=click.Choice(["default", "exact", "central", "nonuniform"]),
            default="default", show_default=True,
            help="d_t s in r_FP; default: exact in exact mode, FP-Diffusion's nonuniform stencil "
                 "in estimated mode (float32 stencils add round-off ~1e-7|s|/h)."),
        "dtype": click.option("--dtype", type=click.Choice(list(DTYPES)), default="auto",
                              show_default=True, help="auto: the model's parameter dtype, else float64."),
        "device": click.option("--device", default="cpu", show_default=True,
                               help="auto, cpu, cuda or cuda:N."),
        "batch_size": click.option("--batch-size", type=click.IntRange(min=1), default=64,
                                   show_default=True),
        "out": click.option("--out", default=None, type=click.Path(file_okay=False),
                            help="Directory for report.json/.csv/.md/.png."),
        "seed": click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
    }
    return [o for k, o in opts.items() if k not in skip]


def model_option_names(skip: tuple[str, ...] = ()) -> list[str]:
    """Keyword names under which click passes the model options (to pop them in a host command)."""
    return [o(lambda: None).__click_params__[0].name for o in model_options(skip)]


def add_model_options(f: Callable | None = None, *, skip: tuple[str, ...] = ()) -> Callable:
    """Apply `model_options(skip)` to a click command function; usable as ``@add_model_options``
    or ``@add_model_options(skip=("sde", "seed"))``."""

    def apply(fn: Callable) -> Callable:
        for opt in reversed(model_options(skip)):
            fn = opt(fn)
        return fn

    return apply if f is None else apply(f)


def run_model_check(**kwargs: Any) -> object:
    """Call `model_check_command` with the parsed option values of `model_options`."""
    model = kwargs.pop("model")
    if model is None:
        raise click.UsageError("--model is required")
    return model_check_command(model, **kwargs)
