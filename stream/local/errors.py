"""Known failures of the command line as one line each: what failed, and what to do.

The `livecommerce` command maps any exception it knows to such a line and exits 1;
`--debug` shows the traceback instead. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re

import aiohttp
import redis.exceptions
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream.engine.rules import RuleError
from stream.local.embedded import EmbeddedStackError
from stream.local.sender import GatewayUnreachable
from stream.local.state import NoSystem
from stream.store import keys
from stream.store.connect import Client
from stream.store.inventory import Inventory
from stream.store.ledger import read_stats
from stream.store.replies import text


class NoSuchRoom(Exception):
    """A command named a room the system has no data for (most likely a typo)."""

    def __init__(self, room: str, known: list[str]) -> None:
        # Ten names are enough to spot the typo; a long list would bury the line.
        shown = ", ".join(known[:10]) + (", …" if len(known) > 10 else "")
        super().__init__(f"no such room {room!r}: no event or stock was ever recorded for "
                         f"it (rooms with data: {shown or 'none yet'})")


async def known_rooms(redis: Client) -> list[str]:
    """Rooms with stock loaded or with any event counted, sorted."""
    stocked = {text(r) for r in await redis.smembers(keys.ROOMS)}
    counted = {text(r) for r in await redis.zrange(keys.METRIC_ROOMS, 0, -1)}
    return sorted(stocked | counted)


async def require_room(redis: Client, room: str) -> None:
    """Raise NoSuchRoom unless `room` has stock or counted events."""
    if await redis.sismember(keys.ROOMS, room) or await read_stats(redis, room):
        return
    if (await Inventory(redis).audit(room)).skus:  # stock written without the workers
        return
    raise NoSuchRoom(room, await known_rooms(redis))


def one_line(exc: BaseException) -> str | None:
    """The line for a known failure, or None for one we do not know (a bug)."""
    if isinstance(exc, NoSystem | NoSuchRoom | GatewayUnreachable):
        return str(exc)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        where = _first_line(exc)
        return (f"Redis is not answering ({where}): start it, or run `livecommerce up` "
                "in this directory and leave LIVECOMMERCE_REDIS_URL unset")
    if isinstance(exc, KafkaConnectionError) or (
            isinstance(exc, KafkaError) and "connect" in str(exc).lower()):
        return (f"Kafka is not answering ({_first_line(exc)}): start it, or leave "
                "LIVECOMMERCE_KAFKA_URL unset for the embedded broker")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return (f"the gateway at {exc.host}:{exc.port} refused the connection: is "
                "`livecommerce up` (or `livecommerce gateway`) running? Check --gateway")
    if isinstance(exc, RuleError):
        return (f"{_first_line(exc)}: run from the checkout (where rules/ is), set "
                "LIVECOMMERCE_RULES_DIR, or see `livecommerce rules check`")
    if isinstance(exc, EmbeddedStackError):
        return f"the embedded stack did not start: {_first_line(exc)}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        port = re.search(r"(\d+)\)?: address already in use", str(exc))
        which = f"port {port.group(1)}" if port else "the port"
        return (f"{which} is in use by another program: pick another with --http-port "
                "(or LIVECOMMERCE_HTTP_PORT), or leave it out for a free one")
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return (f"{exc.filename}: no such file: check the path (a tokens file is written "
                "by `livecommerce up` when LIVECOMMERCE_TOKENS_FILE names a new file)")
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused ({_first_line(exc)}): is the server running?"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
