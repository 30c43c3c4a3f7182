"""Option types, validators and decorators shared by the click commands (one copy of each, for
one error message), and the command-line vocabulary every command follows:

- ``--out DIR`` is always a directory (a run, an experiment, a report folder). A command that
  writes one file names it by its format: ``--json FILE``, ``--md FILE``, ``--png FILE``,
  ``--npy FILE``, ``--weights FILE``.
- ``--steps`` counts optimiser steps; a sampler's time steps are ``--sampler-steps``.
- ``--n-samples`` counts generated samples; ``--n-points`` counts evaluation points x (per t,
  or held out); ``--n-t`` counts times; ``--batch-size`` is a batch (``--ic-batch-size`` the
  initial-condition batch of cauchy).
- ``--sde`` defaults to vp everywhere (ve on request).
- ``--threads N`` on every command that computes (`threads_option`; default `default_threads`).
- Bad input exits 2 with one line naming the value, before any data is read or anything is
  computed or written: floats are finite (`FiniteFloat`), output paths are checked at parse
  time (`output_dir`, `output_file`), a run directory holds one kind of run (`check_run_dir`).
- An old spelling stays as a hidden alias that prints a deprecation note (`old_spelling`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click


def positive_int(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Callback of an ``type=int`` option that must be > 0 (None, an unset option, passes)."""
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be > 0, got {value}", ctx=ctx, param=param)
    return value


def resolve_device_option(spec: str, param_hint: str = "--device") -> Any:
    """The torch.device that scorefpe.training.config.resolve_device makes of a --device value
    (auto, cpu, cuda, cuda:N); click.BadParameter (exit 2) naming the value for any other
    spelling, or for CUDA where torch has none."""
    import torch

    from scorefpe.training.config import resolve_device

    try:
        dev = resolve_device(str(spec))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=param_hint) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{spec!r}: CUDA is not available", param_hint=param_hint)
    return dev


def comma_list(kind: Callable[[str], Any], what: str, *, allow_empty: bool = False,
               choices: Any = None) -> Callable[..., tuple | None]:
    """Callback parsing a comma-separated list ("1e-4,0.01,1") into a tuple of ``kind(item)``,
    non-empty unless ``allow_empty``, each item given once and (``choices``) one of them;
    None stays None. ``what`` names the items in the error."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        try:
            out = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}", ctx=ctx,
                                     param=param) from None
        if not out and not allow_empty:
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}", ctx=ctx,
                                     param=param)
        if choices is not None:
            bad = [v for v in out if v not in choices]
            if bad:
                raise click.BadParameter(f"unknown {bad[0]!r}; choose from {', '.join(choices)}",
                                         ctx=ctx, param=param)
        twice = sorted({v for v in out if out.count(v) > 1}, key=out.index)
        if twice:
            raise click.BadParameter(f"{twice[0]!r} is given more than once in {value!r}",
                                     ctx=ctx, param=param)
        return out

    return parse


def finite_float(text: str) -> float:
    """float(text), refusing "nan" and "inf" with ValueError."""
    import math

    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text!r} is not finite")
    return v


parse_floats = comma_list(finite_float, "numbers")
"""A comma-separated list of finite floats ("1e-4,0.01,1") as a non-empty tuple; None stays None."""


# ---------------------------------------------------------------------------------------------
# Numbers: finite floats only.
class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses "nan", "inf" and "-inf" (FloatRange lets NaN through,
    since every comparison with NaN is false, and +-inf through an open bound), so no non-finite
    setting reaches a config or a computation."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(rv, param, ctx)


FINITE = FiniteFloat()
"""Any finite float."""
POS_FLOAT = FiniteFloat(min=0, min_open=True)
"""A finite float > 0."""
NONNEG_FLOAT = FiniteFloat(min=0)
"""A finite float >= 0."""
UNIT_OPEN = FiniteFloat(min=0, max=1, min_open=True, max_open=True)
"""A float in the open interval (0, 1) (times t_min, fractions)."""


class GradClip(click.ParamType):
    """A gradient-norm clip: a finite number > 0, or "inf" (no clipping: the norm is never
    above infinity). NaN, 0 and negative values are refused."""

    name = "clip norm"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        rv = click.FLOAT.convert(value, param, ctx)
        if not (rv > 0):  # also NaN
            self.fail(f"{value!r} is not > 0 (use inf for no clipping)", param, ctx)
        return math.inf if math.isinf(rv) else rv


GRAD_CLIP = GradClip()
"""A gradient-norm clip > 0, or inf for none."""


# ---------------------------------------------------------------------------------------------
# Output paths: checked when the option is parsed, before any data is loaded or computed.
def _first_existing_ancestor_problem(path: Path) -> str | None:
    """Why nothing can be created at ``path`` because of its parents (a parent that is a regular
    file, or an existing parent directory that is not writable), or None."""
    import os

    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{str(parent)!r} is a file, not a directory"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"directory {str(parent)!r} is not writable"
            return None
    return None


def output_path_problem(path: str | Path, *, directory: bool) -> str | None:
    """Why ``path`` cannot be the output directory (``directory``) or output file, or None:
    it exists as the other kind, or a parent is a regular file or an unwritable directory."""
    import os

    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        return f"{str(p)!r} exists and is not a directory"
    if not directory and p.is_dir():
        return f"{str(p)!r} is a directory; give a file name"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{str(p)!r} is not writable"
    return _first_existing_ancestor_problem(p)


def _output_callback(directory: bool):
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            problem = output_path_problem(value, directory=directory)
            if problem:
                raise click.BadParameter(problem, ctx=ctx, param=param)
        return value

    return check


output_dir = _output_callback(directory=True)
"""Callback of an option naming an output directory (None passes): exit 2 if it is a file, or
a parent is a file or unwritable. Runs at parse time, so nothing is computed first."""
output_file = _output_callback(directory=False)
"""Callback of an option naming an output file (None passes): exit 2 if it is a directory, or
a parent is a file or unwritable."""


# ---------------------------------------------------------------------------------------------
# Run directories: one kind of run per directory.
RUN_KINDS = {
    # kind: the command that writes it
    "mnist": "train mnist",
    "synthetic": "train synthetic",
    "cauchy": "cauchy",
    "benchmark": "benchmark synthetic",
    "table1": "experiment table1",
    "lambda-sweep": "experiment lambda-sweep",
}


def run_kind(directory: str | Path) -> str | None:
    """The kind of run that ``directory`` holds (a key of RUN_KINDS), "unknown" for a non-empty
    directory of none of them, None for a missing or empty directory."""
    import json

    d = Path(directory)
    if not d.is_dir() or not any(d.iterdir()):
        return None
    if (d / "benchmark_config.json").is_file():
        return "benchmark"
    if (d / "experiment.json").is_file():
        return "table1"
    if (d / "sweep.json").is_file():
        return "lambda-sweep"
    cfg = d / "config.json"
    if cfg.is_file():
        try:
            conf = json.loads(cfg.read_text())
        except (OSError, ValueError):
            return "unknown"
        if isinstance(conf, dict):
            if "synthetic" in conf:
                return "synthetic"
            if "train" in conf:
                return "mnist"
            if "residual" in conf or "collocation" in conf:
                return "cauchy"
    if (d / "pinn").is_dir() or (d / "results.json").is_file():
        return "cauchy"
    return "unknown"


def check_run_dir(out: str | Path, kind: str, param_hint: str = "--out") -> None:
    """Refuse (exit 2) an output directory that holds a run of another kind than ``kind`` (or
    files of no run), so two commands never mix their files in one directory."""
    found = run_kind(out)
    if found is None or found == kind:
        return
    what = (f"holds a `scorefpe {RUN_KINDS[found]}` run" if found in RUN_KINDS
            else "is not empty and holds no scorefpe run")
    raise click.BadParameter(f"{str(out)!r} {what}, not a `scorefpe {RUN_KINDS[kind]}` one; "
                             f"choose a new or empty directory", param_hint=param_hint)


# ---------------------------------------------------------------------------------------------
# Threads.
def default_threads() -> int:
    """torch CPU threads when --threads is not given: $OMP_NUM_THREADS if set (the standard knob,
    which torch also reads), else 1. One thread because the default must not oversubscribe a
    machine shared with other jobs (torch's own default, one per core, made a 2-core `train
    mnist` 8x slower beside other work) and because results then have the same bits on every
    machine; the networks here are small enough that more threads gain little. Give --threads
    N (or OMP_NUM_THREADS=N) on a machine of your own."""
    import os

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(env)
    except ValueError:
        return 1
    return n if n >= 1 else 1


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int:
    import torch

    n = default_threads() if value is None else value
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def threads_option(f: Callable) -> Callable:
    """Decorator adding ``--threads N`` to a command that computes: torch's CPU thread count,
    set when the option is parsed (default: `default_threads`). The value is not passed on;
    read it back with torch.get_num_threads()."""
    return click.option(
        "--threads", type=click.IntRange(min=1), default=None, expose_value=False,
        callback=_set_threads, is_eager=False,
        help="torch CPU threads [default: $OMP_NUM_THREADS, else 1: no oversubscription on a "
             "shared machine, the same bits on every machine]")(f)


# ---------------------------------------------------------------------------------------------
# Old spellings.
def old_spelling(old: str, new: str, dest: str, *, required: bool = False,
                 **option_kw: Any) -> Callable[[Callable], Callable]:
    """Decorator: keep ``old`` (e.g. "--batch") working as a hidden alias of the option ``new``
    whose parameter is ``dest``; ``option_kw`` repeats the new option's type and callback so
    the alias is validated the same way. Using it prints one deprecation line to stderr; giving
    both is a usage error (exit 2), and so is giving neither when ``required`` (then declare
    ``new`` with required=False: click cannot know that the alias counts)."""
    import functools

    from click.core import ParameterSource

    alias = f"_old_{dest}"

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(alias)
            if value is not None:
                ctx = click.get_current_context()
                if ctx.get_parameter_source(dest) not in (None, ParameterSource.DEFAULT,
                                                          ParameterSource.DEFAULT_MAP):
                    raise click.UsageError(f"{old} is the old spelling of {new}; give only {new}")
                click.echo(f"note: {old} is deprecated; use {new}", err=True)
                kwargs[dest] = value
            if required and kwargs.get(dest) is None:
                raise click.UsageError(f"Missing option '{new}'.")
            return f(*args, **kwargs)

        return click.option(old, alias, hidden=True, default=None, **option_kw)(wrapper)

    return deco
