"""The `scorefpe` command: a click group whose subcommands live in sibling modules."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scorefpe")
def main() -> None:
    """scorefpe: check, measure and enforce the score Fokker-Planck equation."""


def _register() -> None:
    # Each command module adds itself here; importing lazily keeps `scorefpe --help` fast.
    from cli.check import check
    from cli.data import data

    main.add_command(check)
    main.add_command(data)


_register()
