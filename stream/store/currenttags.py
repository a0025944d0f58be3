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
    partition = partition_for(viewer, partitions)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.viewer_room_index(deployment, partition), viewer)
        pipe.smembers(keys.viewer_rooms(viewer))  # as workers before session 21 kept them
        indexed, older = await pipe.execute()
    # The client answers bytes (no decode_responses); the types allow str too.
    rooms = sorted({_text(r) for r in older} | set(_text(indexed).split("\n") if indexed else ()))
    if not rooms:
        return []
    states = keys.viewer_states(deployment, partition)
    blobs = await redis.hmget(states, [f"{room}|{viewer}" for room in rooms])
    return sorted((room, tag, value) for room, blob in zip(rooms, blobs, strict=True) if blob
                  for tag, values in tags_in(_bytes(blob)).items() for value in values)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _bytes(blob: bytes | str) -> bytes:
    return blob if isinstance(blob, bytes) else blob.encode()


