"""Option validators shared by the click commands (one copy of each, for one error message)."""

from __future__ import annotations

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


def comma_list(kind: Callable[[str], Any], what: str, *,
               allow_empty: bool = False) -> Callable[..., tuple | None]:
    """Callback parsing a comma-separated list ("1e-4,0.01,1") into a tuple of ``kind(item)``,
    non-empty unless ``allow_empty``; None stays None. ``what`` names the items in the error."""

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
        return out

    return parse


parse_floats = comma_list(float, "numbers")
"""A comma-separated list of floats ("1e-4,0.01,1") as a non-empty tuple; None stays None."""
