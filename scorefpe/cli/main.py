"""The `scorefpe` command: a click group whose subcommands live in sibling modules."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scorefpe")
def main() -> None:
    """scorefpe: check, measure and enforce the score Fokker-Planck equation."""


def _register() -> None:
    from scorefpe.cli.bench import bench
    from scorefpe.cli.cauchy import cauchy
    from scorefpe.cli.check import check
    from scorefpe.cli.data import data
    from scorefpe.cli.derive import derive
    from scorefpe.cli.lenet import lenet
    from scorefpe.cli.maps import maps
    from scorefpe.cli.train import train

    for command in (check, data, derive, train, bench, lenet, cauchy, maps):
        main.add_command(command)
    # likelihood, curl, benchmark, and `train synthetic` inside the train group.
    from scorefpe.cli import synthetic

    synthetic.register(main)
    from scorefpe.cli import evaluate  # sample, eval, report, diagnose

    evaluate.register(main)
    from scorefpe.cli.experiment import experiment

    main.add_command(experiment)


_register()
