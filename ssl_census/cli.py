"""The ``ssl-census`` command line: a thin shell over the stages.

Each stage keeps its commands in its own ``commands.py``; this file only assembles them, turns
a :class:`~ssl_census.core.errors.UserError` into one line on stderr and exit code 2, and
shows what the library logs (logger ``ssl_census``, INFO and up) on stderr: library code logs,
commands print their results to stdout.
"""

from __future__ import annotations

import logging
import sys

import click

from ssl_census import __version__
from ssl_census.benchmarks.commands import bench
from ssl_census.census.commands import census
from ssl_census.core.errors import UserError
from ssl_census.evaluation.commands import embed, evaluate
from ssl_census.rebuild.commands import rebuild
from ssl_census.reproduce.commands import reproduce
from ssl_census.shards.commands import shards
from ssl_census.tasks.commands import finetune
from ssl_census.training.commands import pretrain


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
    logging.basicConfig(format="%(message)s")  # other libraries stay at WARNING
    logging.getLogger("ssl_census").setLevel(logging.INFO)


for _command in (census, pretrain, shards, bench, finetune, evaluate, embed, reproduce, rebuild):
    main.add_command(_command)

if __name__ == "__main__":
    main()
