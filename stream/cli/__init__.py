"""The `livecommerce` command (SPEC: Interfaces / Command line).

Here is the group, `main`, and the one-line errors of every command; the commands live
in modules by what they do: `system` runs the system (`up`, `demo`, `worker`, `gateway`)
and drives a show into it (`simulate`), `results` reads a room's results (`check`,
`report`, `picklist`, `followups`), `rulefiles` holds the `rules` group. `common` has
what they share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from stream.cli.results import check, followups, picklist, report
from stream.cli.rulefiles import rules
from stream.cli.system import demo, gateway, simulate, up, worker


class _Cli(click.Group):
    """Known failures become one line and exit 1 (`--debug`: the traceback instead)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            from stream.local.errors import one_line

            line = _known(exc, one_line)
            if line is None or ctx.params.get("debug"):
                raise
            click.echo(f"error: {line} (--debug shows the traceback)", err=True)
            ctx.exit(1)


def _known(exc: BaseException, describe: Callable[[BaseException], str | None]) -> str | None:
    """The line for `exc` or for what caused it (a wrapped connection error)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if (line := describe(cause)) is not None:
            return line
        cause = cause.__cause__ or cause.__context__
    return None


@click.group(cls=_Cli)
@click.version_option(package_name="livecommerce", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Real-time stream processing for live-commerce broadcasts."""
    if not debug:
        # aiokafka logs each refused connect attempt (20 while a broker is looked for);
        # the one-line error at the end says it once, with what to do.
        logging.getLogger("aiokafka").addFilter(
            lambda record: not str(record.msg).startswith("Unable connect to"))


for command in (up, demo, worker, gateway, simulate, check, report, picklist, followups, rules):
    main.add_command(command)

__all__ = ["main"]
