"""The `scorefpe` command: a click group whose subcommands live in sibling modules."""

from __future__ import annotations

import click


class _Main(click.Group):
    """The top-level group: a command that fails because the machine cannot store its output
    (disk full, quota, read-only file system, permission) ends with one line naming the file
    and exit 1, not a traceback. Everything else passes through unchanged."""

    def invoke(self, ctx: click.Context):
        import errno

        try:
            return super().invoke(ctx)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                 errno.EPERM):
                raise
            where = f" writing {err.filename}" if err.filename else ""
            raise click.ClickException(f"{err.strerror or err}{where}: free space or choose "
                                       "another output path, then run the command again") from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scorefpe")
def main() -> None:
    """scorefpe: check, measure and enforce the score Fokker-Planck equation."""


def _register() -> None:
    from scorefpe.cli.bench_cmd import bench
    from scorefpe.cli.cauchy_cmd import cauchy
    from scorefpe.cli.cauchy_report_cmd import cauchy_report
    from scorefpe.cli.check_cmd import check
    from scorefpe.cli.data_cmd import data
    from scorefpe.cli.derive_cmd import derive
    from scorefpe.cli.lenet_cmd import lenet
    from scorefpe.cli.maps_cmd import maps
    from scorefpe.cli.train_cmd import train

    for command in (check, data, derive, train, bench, lenet, cauchy, cauchy_report, maps):
        main.add_command(command)
    # likelihood, curl, benchmark, and `train synthetic` inside the train group.
    from scorefpe.cli import synthetic_cmd as synthetic

    synthetic.register(main)
    from scorefpe.cli import evaluate_cmd as evaluate  # sample, eval, report, diagnose

    evaluate.register(main)
    from scorefpe.cli.experiment_cmd import experiment

    main.add_command(experiment)


_register()
