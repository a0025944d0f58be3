"""What the `livecommerce` commands share: the settings from the environment, and one way
to run a coroutine in which a Redis that cannot be used is one line, not a traceback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from stream.core import config


def load_settings() -> config.Settings:
    try:
        return config.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


T = TypeVar("T")


def run_coro(coro: Coroutine[Any, Any, T],
             runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run) -> T:
    """Run `coro`; a Redis it cannot use is one line on stderr and exit code 2 (whatever
    it started is stopped on the way out), not a traceback or a hang."""
    from stream.store.connect import RedisUnusable

    try:
        return runner(coro)
    except RedisUnusable as exc:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.find_root().params.get("debug"):
            raise  # `--debug`: the traceback, as for every other known failure
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


__all__ = ["load_settings", "run_coro"]
