"""Running pipelines that hold Lua scripts without a round trip more each time.

redis-py asks Redis `SCRIPT EXISTS` before it executes any pipeline holding a script:
one more round trip per pipeline, several per batch on the worker's path (~5% of its
throughput). `execute` skips that question for scripts this connection pool has run
before. If Redis has lost them since (restarted without its data), the pipeline fails
with NOSCRIPT; they are then asked about again, and the step fails as a transient
error, so the caller's retry runs it again and loads them on the way.

On a Redis Cluster a pipeline is redis-py's `ClusterPipeline`, which splits the queued
commands per node, refuses `evalsha` and never loads scripts: `call` queues the raw
EVALSHA (routed by its keys' slot) and `execute` loads each script on every
primary (`SCRIPT LOAD` goes to all of them) the first time this client queues it, and
again after a NOSCRIPT (a replica promoted by a failover has an empty script cache).

Every script call goes through `call`, which checks that all its KEYS hash to one slot:
a cross-slot script is a bug to be caught in the tests (on a single node too), not a
CROSSSLOT error in production. One `key_slot` per key per call (~0.3 µs each; the
worker's calls carry 2-7 keys and up to 500 operations each).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from weakref import WeakKeyDictionary

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from stream.store.connect import AnyPipeline, Client

# Items per script call: a script holds Redis for its whole run, so thousands of items
# (effects, viewer states) in one call made every other command of every worker and
# gateway wait milliseconds.
SCRIPT_ITEMS = 500


class ScriptsLost(RedisConnectionError):
    """Redis no longer has our scripts (it restarted); retry the step."""


class CrossSlotScript(ValueError):
    """A script was called with KEYS of more than one hash slot (a bug in the caller)."""


_known: WeakKeyDictionary[ConnectionPool, set[str]] = WeakKeyDictionary()
_known_cluster: WeakKeyDictionary[RedisCluster, set[str]] = WeakKeyDictionary()
_queued: WeakKeyDictionary[ClusterPipeline, dict[str, AsyncScript]] = WeakKeyDictionary()


def check_slot(script: AsyncScript, keys: Sequence[str]) -> None:
    """Raise `CrossSlotScript` naming the script and keys unless all keys share a slot."""
    if len(keys) < 2:
        return
    first = key_slot(keys[0].encode())
    for key in keys[1:]:
        if key_slot(key.encode()) != first:
            slots = {k: key_slot(k.encode()) for k in keys}
            raise CrossSlotScript(f"script {script.sha[:10]} called with keys of several "
                                  f"hash slots: {slots}")


async def call(script: AsyncScript, *, keys: Sequence[str], args: Iterable[Any],
               client: Client | AnyPipeline | None = None) -> Any:
    """Run (or queue, on a pipeline) `script` once its keys are checked to share a slot."""
    check_slot(script, keys)
    if isinstance(client, ClusterPipeline):
        # redis-py refuses `evalsha` on a cluster pipeline (its script loading cannot
        # follow the split per node); the raw command is routed by its keys' slot, and
        # `execute` loads the script on every primary first.
        _queued.setdefault(client, {})[script.sha] = script
        return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    return await script(keys=keys, args=args, client=client)


async def execute(pipe: AnyPipeline) -> list[Any]:
    """`pipe.execute()`, asking about scripts only the first time on this pool."""
    if isinstance(pipe, ClusterPipeline):
        return await _execute_cluster(pipe)
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


async def _execute_cluster(pipe: ClusterPipeline) -> list[Any]:
    client = pipe.cluster_client
    known = _known_cluster.setdefault(client, set())
    for sha, script in _queued.pop(pipe, {}).items():
        if sha not in known:
            await client.script_load(script.script)  # every primary
            known.add(sha)
    try:
        return await pipe.execute()
    except NoScriptError:
        known.clear()
        raise ScriptsLost("a Redis Cluster node lacks the scripts (a failover?); they "
                          "load on the retry") from None
