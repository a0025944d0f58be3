"""Creating the topics (idempotent): every process calls it before it reads or writes."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.core.topics import Topics


async def ensure_topics(bootstrap: str, topics: Topics, *, partitions: int,
                        replication: int = 1, attempts: int = 20) -> None:
    """Create every input and output topic that is missing, with `partitions` each.

    Existing topics are left alone: tansu cannot add partitions, and on a real cluster
    changing the count would move viewers between partitions mid-broadcast.
    """
    names = [*topics.inputs, *topics.outputs]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    for attempt in range(attempts):
        try:
            await admin.start()
            break
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, num_partitions=partitions, replication_factor=replication)
                   for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(missing)
    finally:
        await admin.close()
