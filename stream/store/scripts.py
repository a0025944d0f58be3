"""Running pipelines that hold Lua scripts without a round trip more each time.

redis-py asks Redis `SCRIPT EXISTS` before it executes any pipeline holding a script:
one more round trip per pipeline, several per batch on the worker's path (~5% of its
throughput). `execute` skips that question for scripts this connection pool has run
before. If Redis has lost them since (restarted without its data), the pipeline fails
with NOSCRIPT; they are then asked about again, and the step fails as a transient
error, so the caller's retry runs it again and loads them on the way.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from redis.asyncio.client import Pipeline
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

# Items per script call: a script holds Redis for its whole run, so thousands of items
# (effects, viewer states) in one call made every other command of every worker and
# gateway wait milliseconds.
SCRIPT_ITEMS = 500


class ScriptsLost(RedisConnectionError):
    """Redis no longer has our scripts (it restarted); retry the step."""


_known: WeakKeyDictionary[ConnectionPool, set[str]] = WeakKeyDictionary()


async def execute(pipe: Pipeline) -> list[Any]:
    """`pipe.execute()`, asking about scripts only the first time on this pool."""
    known = _known.setdefault(pipe.connection_pool, set())
    shas = {script.sha for script in pipe.scripts}
    if shas <= known:
        pipe.scripts = set()
    try:
        answers = await pipe.execute()
    except NoScriptError:
        known.clear()
        raise ScriptsLost("Redis lost the scripts; they load on the retry") from None
    known |= shas
    return answers
