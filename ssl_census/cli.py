"""The ``ssl-census`` command line: a thin shell over the stages.

Each stage keeps its commands in its own ``commands.py``; this file only assembles them and
turns a :class:`~ssl_census.core.errors.UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click

from ssl_census import __version__
from ssl_census.core.errors import UserError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e.one_line()}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ssl-census")
def main() -> None:
    """Self-supervised learning on the CELLxGENE census.

    census -> shards -> loader -> pretrain -> finetune -> evaluate.
    """


def _register() -> None:
    from ssl_census.census.commands import census

    main.add_command(census)
    from ssl_census.training.commands import pretrain

    main.add_command(pretrain)
    from ssl_census.shards.commands import shards

    main.add_command(shards)
    from ssl_census.benchmarks.commands import bench

    main.add_command(bench)
    from ssl_census.evaluation.commands import embed, evaluate
    from ssl_census.tasks.commands import finetune

    main.add_command(finetune)
    main.add_command(evaluate)
    main.add_command(embed)
    from ssl_census.reproduce.commands import reproduce

    main.add_command(reproduce)
    from ssl_census.rebuild.commands import rebuild

    main.add_command(rebuild)


_register()

if __name__ == "__main__":
    main()
