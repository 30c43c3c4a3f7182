"""`scorefpe derive`: derive the score FPE of an SDE with sympy and print it."""

from __future__ import annotations

import time

import click


@click.command()
@click.option("--sde", "sde_name", type=click.Choice(["vp", "ve", "subvp"]), required=True,
              help="Forward SDE (default parameters of scorefpe.sde).")
@click.option("--dim", type=int, default=2, show_default=True,
              help="Dimension D of x, 1..3.")
@click.option("--latex", is_flag=True, help="Print a LaTeX align* block instead of plain text.")
def derive(sde_name: str, dim: int, latex: bool) -> None:
    """Derive L[s] and the score FPE d_t s = grad_x L[s] from the Fokker-Planck equation."""
    from scorefpe.symbolic.derivation import MAX_DIM, derive as derive_fpe, render_derivation

    if not 1 <= dim <= MAX_DIM:
        raise click.BadParameter(f"{dim} is not in 1..{MAX_DIM}", param_hint="--dim")
    t0 = time.perf_counter()
    try:
        sde, fpe = derive_fpe(sde_name, dim)
        text = render_derivation(sde, fpe, latex=latex)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    elapsed = time.perf_counter() - t0
    click.echo(text)
    comment = "% " if latex else ""
    click.echo(f"{comment}derived and checked against FP-Diffusion Table 3 in {elapsed:.2f} s")
