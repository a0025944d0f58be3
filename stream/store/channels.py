"""Pub/sub from workers to gateways (live stock, nudges), on one node or a Redis Cluster.

On a cluster we keep classic PUBLISH/SUBSCRIBE, a documented broadcast: a message
published on any node is forwarded over the cluster bus to every node (replicas
included), so each gateway's one subscription, on whichever node, hears every room.
Sharded pub/sub (SPUBLISH/SSUBSCRIBE per room) would keep a room's messages on its
slot's shard, but then every gateway needs a subscription per room with viewers, moved
at every failover and resharding, and a gateway holds viewers of every room anyway; at
the coalesced rates here (at most 10 updates per SKU per second) the bus traffic of the
broadcast is small. Revisit past ~100k messages/s.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from stream.store.connect import AnyPipeline, Client


def queue_publish(pipe: AnyPipeline, channel: str, data: bytes) -> None:
    """Queue PUBLISH of `data` on `channel` on `pipe`, a single node's or a cluster's."""
    if isinstance(pipe, ClusterPipeline):
        # redis-py refuses `publish` in a cluster pipeline (it has no key to route by):
        # the raw command to one fixed node keeps one publisher's messages in order.
        node = pipe.cluster_client.get_node_from_key(channel)
        pipe.execute_command("PUBLISH", channel, data, target_nodes=node)
    else:
        pipe.publish(channel, data)


async def publish_many(redis: Client, channel: str, messages: Sequence[bytes]) -> None:
    """PUBLISH each message on `channel`, in order, in one round trip."""
    if not messages:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for data in messages:
            queue_publish(pipe, channel, data)
        await pipe.execute()


def subscriber(redis: Client, *, attempt: int = 0) -> PubSub:
    """A pub/sub connection for a gateway. On a cluster, each new attempt takes the next
    known node, so a dead node (a kill -9 before its failover) is not retried for ever."""
    if isinstance(redis, RedisCluster):
        nodes = sorted(redis.get_nodes(), key=lambda n: n.name)
        return redis.pubsub(node=nodes[attempt % len(nodes)])
    return redis.pubsub()
