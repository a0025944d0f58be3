"""A viewer's current tags, read from the viewer engine's saved state in Redis."""

from __future__ import annotations

from stream.core.topics import partition_for
from stream.engine.state import tags_in
from stream.store import keys
from stream.store.connect import Client


async def held_tags(redis: Client, viewer: str, *, partitions: int,
                    deployment: str) -> list[tuple[str, str, str]]:
    """(room, tag, value) the viewer holds now, sorted: read from the engine's saved state
    (saved every second), so they are what the tag records on Kafka add up to."""
    # The client answers bytes (no decode_responses); the types allow str too.
    rooms = sorted(r.decode() if isinstance(r, bytes) else r
                   for r in await redis.smembers(keys.viewer_rooms(viewer)))
    if not rooms:
        return []
    states = keys.viewer_states(deployment, partition_for(viewer, partitions))
    blobs = await redis.hmget(states, [f"{room}|{viewer}" for room in rooms])
    return sorted((room, tag, value) for room, blob in zip(rooms, blobs, strict=True) if blob
                  for tag, values in tags_in(_bytes(blob)).items() for value in values)


def _bytes(blob: bytes | str) -> bytes:
    return blob if isinstance(blob, bytes) else blob.encode()


