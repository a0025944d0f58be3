"""Which effects a dead worker claimed are in Kafka: read back from its output partitions.

A worker claims a round of effects in Redis before it sends them and records the round
as acked once Kafka has acked it (stream/store/claims.py). A worker killed in between
leaves claims whose fate is unknown; its successor re-decides the same effects and asks
here which of them reached Kafka, so it sends only the others. Rare (a takeover after a
crash), and it keeps the choice between losing one and sending it twice away.
"""

from __future__ import annotations

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.core.models import FollowUp, Nudge, TagChange
from stream.core.topics import Topics
from stream.store.claims import once_id
from stream.worker import gaps

_KIND: dict[str, type[Nudge | TagChange | FollowUp]] = {
    "nudges": Nudge, "tags": TagChange, "followups": FollowUp}


async def once_ids_in(since: dict[tuple[str, int], int], *, bootstrap: str,
                      topics: Topics) -> set[str]:
    """The once-ids of the effects on these output partitions, each from its time on.

    One consumer reads them all: a takeover held nudges due meanwhile behind this
    look, and starting a consumer per partition (up to six, one after another) cost
    seconds of it on a busy machine (a nudge 6.2 s past the takeover's end).
    """
    if not since:
        return set()
    tps = {TopicPartition(topic, p): max(0, ms) for (topic, p), ms in since.items()}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(tps))
        found = await consumer.offsets_for_times(tps)
        ends = await consumer.end_offsets(list(tps))
        todo: dict[TopicPartition, int] = {}
        # Live workers write these partitions meanwhile: a record the broker let this
        # read skip would be taken for unsent, and sent twice (stream/worker/gaps.py).
        reader = gaps.Reader(consumer, bootstrap=bootstrap)
        for tp, at in found.items():
            if at is not None and at.offset < ends[tp]:
                consumer.seek(tp, at.offset)
                todo[tp] = ends[tp]
                reader.nexts[tp] = at.offset
        ids: set[str] = set()
        while todo:
            for r in await reader.getmany(*todo, timeout_ms=500):
                kind = _KIND[r.topic.removeprefix(topics.prefix)]
                ids.add(once_id(msgspec.json.decode(r.value, type=kind)))
            for tp, end in list(todo.items()):
                if await consumer.position(tp) >= end:
                    del todo[tp]
        return ids
    finally:
        await consumer.stop()


__all__ = ["once_ids_in"]
