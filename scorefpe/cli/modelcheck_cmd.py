"""`scorefpe check --model ...`: the options of the score-FPE report of a user's own score model
(issue 9) and their parsing; the run itself is `scorefpe.modelcheck.run.check_model_spec`.

`scorefpe/cli/check_cmd.py` adds these options to `check` with ``@add_model_options(skip=("sde",
"seed"))`` and calls `run_model_check` when --model is given. `run_model_check` /
`model_check_command` raise click.UsageError (exit 2) on bad input.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import click

from scorefpe.cli._options import output_dir, resolve_device_option
from scorefpe.modelcheck.run import DTYPES
from scorefpe.sde import SDES


def sde_from_options(sde: Any, sde_params: dict[str, float | None]):
    """The SDE named by --sde with the --beta-*/--sigma-* values given (None: the default);
    click.UsageError (exit 2) naming a parameter the SDE does not take or a bad value."""
    from scorefpe.modelcheck.run import sde_with_params
    from scorefpe.sde import SDE

    if isinstance(sde, SDE):
        return sde
    try:
        return sde_with_params(str(sde), sde_params)
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
    """Parse the option values and run `scorefpe.modelcheck.run.check_model_spec`; write the
    report files into --out. Bad input raises click.UsageError (exit 2) naming the problem, a
    failure mid-run click.ClickException. Returns the ModelReport."""
    from scorefpe.modelcheck import parse_param
    from scorefpe.modelcheck.run import check_model_spec, write_report_files

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
        report = check_model_spec(
            model, the_sde, p, data=data, t_grid=t_grid, n_points=n_points, n_probes=n_probes,
            seed=seed, mode=mode, shape=shape, dtype=DTYPES[dtype], device=dev,
            batch_size=batch_size, time_method=None if time_method == "default" else time_method,
            progress=progress, echo=echo, t_start=t_start)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    except RuntimeError as err:  # e.g. an ODE solver failure or a model error mid-run
        raise click.ClickException(f"{type(err).__name__}: {err}") from err
    if out is not None:
        try:
            paths = write_report_files(report, out)
        except ValueError as err:
            raise click.UsageError(str(err)) from err
        echo(f"wrote {', '.join(str(f) for f in paths)}")
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
            help="d_t s in r_FP; default: exact (forward-mode AD). The stencils (h = 1e-3) "
                 "are biased where s changes on that scale in t, i.e. at small t, and add "
                 "round-off ~1e-7|s|/h in float32."),
        "dtype": click.option("--dtype", type=click.Choice(list(DTYPES)), default="auto",
                              show_default=True, help="auto: the model's parameter dtype, else float64."),
        "device": click.option("--device", default="cpu", show_default=True,
                               help="auto, cpu, cuda or cuda:N."),
        "batch_size": click.option("--batch-size", type=click.IntRange(min=1), default=64,
                                   show_default=True),
        "out": click.option("--out", default=None, type=click.Path(file_okay=False),
                            callback=output_dir,
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
