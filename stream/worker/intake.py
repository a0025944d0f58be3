"""An agent's records handed over in batches as they arrive, not on faust's tick.

faust's `take_events(max_, within)` waits its whole `within` after every batch before it
hands over the next (at 1,000 orders/s a cycle was a batch plus 10 ms), and passes each
record through its stream's per-event loop (a `sleep(0)`, sensors, the buffer's
processor) on the way. Here the agent's channel is read directly: wait for the first
record, take whatever else is queued behind it (up to `max_`), hand the batch over, ack
its records. Under a backlog faust's fetcher keeps the queue full and batches are large;
when records trickle in, one goes as soon as it is there.

What faust's stream loop does per record and the pipeline still needs is kept: a record
is tracked as unacked before it is handed over (faust waits for these at a rebalance and
a stop, and commits only past acked offsets), and acked after its batch, as
`take_events` does, whether the batch raised or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
from faust.types import EventT

__all__ = ["batches"]


async def batches(app: faust.App, stream: faust.StreamT[Any], *,
                  max_: int) -> AsyncIterator[Sequence[EventT[Any]]]:
    """Yield the stream's events in batches of at most `max_`, each as soon as its
    first event is queued. The events of a batch are acked when the next is asked for
    (or the loop ends)."""
    # Started, as its own iteration would: faust stops an agent by stopping its stream.
    await stream.maybe_start()
    channel = aiter(stream.channel)  # an iterator clone: the conductor delivers to it
    queue = channel.queue  # type: ignore[attr-defined]  # faust's Channel has one
    consumer = app.consumer
    acking = app.topics.acking_topics
    flow = app.flow_control
    stopping = False
    while not stream.should_stop and not stopping:
        try:
            events: list[EventT[Any]] = [await queue.get()]
        except StopAsyncIteration:  # faust's Actor.cancel(): its stream loop ends here
            return
        while len(events) < max_:
            try:
                events.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                break
            except StopAsyncIteration:  # cancelled behind these: hand them over, then end
                stopping = True
                break
        current: list[EventT[Any]] = []
        for event in events:
            message = event.message
            # Fetched while a rebalance was under way: faust's own loop skips (and acks)
            # these; the partition is re-sought when the rebalance ends.
            if not flow.is_active():
                continue
            if message.topic in acking and not message.tracked:
                message.tracked = True
                consumer.track_message(message)
            current.append(event)
        try:
            if current:
                yield current
        finally:
            for event in events:
                event.ack()
