"""Producer-side envelopes: many events of one partition travel as one Kafka record.

Faust pays per record (~12k records/s per worker measured here); an envelope of a
few hundred events pays that once. Events from concurrent requests bound for the
same partition are gathered for at most `linger_s`, then sent as one JSON array.
Each caller gets a future that resolves when the broker has acked its record, so
`202 Accepted` means written to Kafka.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from stream.core.codec import envelope


@dataclass(slots=True)
class _Pending:
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class EnvelopeProducer:
    def __init__(self, *, bootstrap: str, linger_s: float = 0.005, max_events: int = 500,
                 max_bytes: int = 256 * 1024) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            # tansu has no idempotent producer; effects are idempotent by id instead.
            enable_idempotence=False,
            acks="all",
            linger_ms=1,
            max_request_size=4 * max_bytes,
        )
        self._linger_s = linger_s
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        # Envelopes shipped and not yet handed to the Kafka client, per partition, oldest
        # first; a partition's list exists while its drain task runs.
        self._queues: dict[tuple[str, int], list[_Pending]] = {}
        self.records_sent = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        self.flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._producer.stop()

    def add(self, topic: str, partition: int, data: bytes) -> asyncio.Future[None]:
        """Queue one encoded event; the future resolves when its record is acked."""
        pending = self._pending.setdefault((topic, partition), _Pending())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending.parts.append(data)
        pending.size += len(data) + 1
        pending.waiters.append(waiter)
        if len(pending.parts) >= self._max_events or pending.size >= self._max_bytes:
            self._ship(topic, partition)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self.flush)
        return waiter

    async def send_one(self, topic: str, value: bytes) -> None:
        """A single record outside the envelope path (dead letters)."""
        await self._producer.send_and_wait(topic, value)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for topic, partition in list(self._pending):
            self._ship(topic, partition)

    def _ship(self, topic: str, partition: int) -> None:
        pending = self._pending.pop((topic, partition))
        queue = self._queues.setdefault((topic, partition), [])
        queue.append(pending)
        if len(queue) == 1:  # else the partition's drain task takes it in its turn
            task = asyncio.create_task(self._drain(topic, partition, queue))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _drain(self, topic: str, partition: int, queue: list[_Pending]) -> None:
        """Hand a partition's envelopes to the Kafka client one after the other, in the
        order they were shipped, and wait for their acks concurrently.

        One task per partition, because aiokafka's `send` keeps no order between callers:
        a caller that finds the partition's batch full waits for it to drain, and a later
        caller scheduled before that one wakes opens the next batch first (seen as a
        record 315 events out of place in tests/integration/test_envelopes.py under load),
        which would break a viewer's order across two requests."""
        acks: list[asyncio.Task[None]] = []
        while queue:
            pending = queue[0]
            value = pending.parts[0] if len(pending.parts) == 1 else envelope(pending.parts)
            try:
                sent = await self._producer.send(topic, value, partition=partition)
            except Exception as exc:
                _settle(pending, exc)
            else:
                acks.append(asyncio.ensure_future(self._acked(sent, pending)))
            queue.pop(0)
        del self._queues[(topic, partition)]
        await asyncio.gather(*acks)

    async def _acked(self, sent: asyncio.Future[object], pending: _Pending) -> None:
        try:
            await sent
        except Exception as exc:
            _settle(pending, exc)
            return
        self.records_sent += 1
        _settle(pending, None)


def _settle(pending: _Pending, exc: BaseException | None) -> None:
    for waiter in pending.waiters:
        if not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
