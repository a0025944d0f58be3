"""A room's input events read back: from the Kafka input topics (within retention) or
an NDJSON file. The edge of `livecommerce rules backtest`; it only reads."""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.core.codec import BodyError, decode_events
from stream.core.config import Settings
from stream.core.models import Event
from stream.core.topics import Topics
from stream.worker import gaps

# A fetch that returns nothing this long, with the end offsets not reached, is a stall.
FETCH_TIMEOUT_MS = 1000


async def from_kafka(settings: Settings, *, room_id: str) -> list[Event]:
    """Every event of `room_id` on the input topics, in topic (viewer, order, host),
    partition and offset order; a record that does not decode is skipped (it went to
    the dead letters when it was sent)."""
    topics = Topics(settings.topic_prefix)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    rows: list[tuple[int, int, int, int, Event]] = []
    try:
        await consumer.topics()  # fetches the metadata partitions_for_topic reads
        parts = [TopicPartition(t, p) for t in topics.inputs
                 for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not parts:
            return []
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        rank = {t: i for i, t in enumerate(topics.inputs)}
        nexts = {tp: await consumer.position(tp) for tp in parts}
        left = {tp for tp in parts if ends[tp] > nexts[tp]}
        # Read during a show, the broker may let a fetch skip what is being written
        # (stream/worker/gaps.py): filled as the worker does.
        reader = gaps.Reader(consumer, bootstrap=settings.kafka_bootstrap, nexts=nexts)
        while left:
            for r in await reader.getmany(*left, timeout_ms=FETCH_TIMEOUT_MS):
                try:
                    decoded = decode_events(r.value)
                except BodyError:
                    continue
                rows += [(rank[r.topic], r.partition, r.offset, i, e)
                         for i, e in decoded.events if e.room_id == room_id]
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    rows.sort(key=lambda row: row[:4])
    return [row[4] for row in rows]


def from_file(path: Path, *, room_id: str) -> list[Event]:
    """The events of `room_id` in an NDJSON (or JSON array) file. Raises ValueError with
    the file, line and field of the first event that does not validate."""
    try:
        decoded = decode_events(path.read_bytes())
    except BodyError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if decoded.rejected:
        first = decoded.rejected[0]
        raise ValueError(f"{path}: event {first.index + 1}: {first.error}")
    return [e for _, e in decoded.events if e.room_id == room_id]
