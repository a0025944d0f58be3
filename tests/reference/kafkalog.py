"""The inputs as Kafka holds them, in the order the model wants them."""

from __future__ import annotations

from collections import defaultdict

from stream.core.codec import decode_events
from stream.core.models import Event, HostEvent, ViewerEvent
from stream.core.topics import Topics

Log = list[tuple[str, int, int, bytes]]  # (topic, partition, offset, value)


def inputs(log: Log, topics: Topics) -> tuple[list[HostEvent], dict[int, list[ViewerEvent]]]:
    """The host events, and each partition's viewer and order events in the order a worker
    applies them: event time, then the viewer topic before the order topic, then arrival."""
    hosts: list[HostEvent] = []
    by_partition: dict[int, list[tuple[int, int, ViewerEvent]]] = defaultdict(list)
    for topic, partition, offset, value in sorted(log, key=lambda r: (r[0], r[1], r[2])):
        for index, event in decode_events(value).events:
            if isinstance(event, HostEvent):
                hosts.append(event)
            elif isinstance(event, ViewerEvent):
                rank = 0 if topic == topics.viewer_events else 1
                by_partition[partition].append((event.ts, rank * 10**9 + offset * 1000 + index,
                                                event))
    return hosts, {p: [e for _, _, e in sorted(items, key=lambda x: (x[0], x[1]))]
                   for p, items in by_partition.items()}


def events(log: Log) -> list[Event]:
    """Every event of the log, in no particular order."""
    return [e for _, _, _, value in log for _, e in decode_events(value).events]
