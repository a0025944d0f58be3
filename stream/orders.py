"""The worker's selling path: stock and order events to inventory scripts, results out.

One Redis pipeline per batch keeps the order of events (a `placed` before its `paid`
in the same batch still works) and costs one round trip for thousands of orders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from stream import keys
from stream.clock import RoomClocks
from stream.codec import encode
from stream.inventory import Inventory, Outcome, parse, result_of
from stream.models import OrderEvent, OrderResult, StockSet
from stream.pipeline import Item, Send
from stream.stockfeed import StockFeed
from stream.topics import Topics


class Orders:
    """Handler for the pipeline: applies stock.set and order.* events, exactly once each."""

    def __init__(self, *, redis: Redis, inventory: Inventory, feed: StockFeed, send: Send,
                 topics: Topics, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._inventory = inventory
        self._feed = feed
        self._send = send
        self._topics = topics
        self._clocks = RoomClocks(redis)
        self._clock = clock
        self._rooms: set[str] = set()

    async def handle(self, items: Sequence[Item]) -> None:
        events = [i.event for i in items if isinstance(i.event, StockSet | OrderEvent)]
        latest: dict[str, int] = {}
        for item in items:
            room = item.event.room_id
            latest[room] = max(latest.get(room, 0), item.event.ts)
        if not latest:
            return
        wall_ms = int(self._clock() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for room, ts in latest.items():
                await self._clocks.advance(pipe, room, event_ms=ts, wall_ms=wall_ms)
            new_rooms = [r for r in latest if r not in self._rooms]
            if new_rooms:
                pipe.sadd(keys.ROOMS, *new_rooms)
            for event in events:
                await self._inventory.queue(pipe, event)
            answers = await pipe.execute()
        self._rooms.update(latest)
        outcomes = answers[len(latest) + (1 if new_rooms else 0):]
        results: list[OrderResult] = []
        for event, answer in zip(events, outcomes, strict=True):
            outcome = parse(answer, room_id=event.room_id, ts=event.ts)
            self._feed.offer(outcome.levels)
            if isinstance(event, OrderEvent):
                results.append(result_of(event, outcome))
        await self._publish(results)
        await self._feed.flush()

    async def sweep(self) -> int:
        """Release reservations past their deadline on each room's clock."""
        wall_ms = int(self._clock() * 1000)
        released = 0
        for raw in await self._redis.smembers(keys.ROOMS):
            room = raw.decode()
            now = await self._clocks.now(room, wall_now_ms=wall_ms)
            if now is None:
                continue
            expired = await self._inventory.expire_due(room, now_ms=now)
            results = [r for r in (_expired_result(room, o, now) for o in expired) if r]
            for _, outcome in expired:
                self._feed.offer(outcome.levels)
            await self._publish(results)
            released += len(results)
        await self._feed.flush()
        return released

    async def _publish(self, results: list[OrderResult]) -> None:
        for result in results:
            await self._send(self._topics.order_results, encode(result))


def _expired_result(room: str, pair: tuple[tuple[str, str], Outcome],
                    now: int) -> OrderResult | None:
    (order_id, viewer), outcome = pair
    if not outcome.fresh:
        return None  # paid or cancelled in the meantime: nothing expired
    return OrderResult(order_id=order_id, room_id=room, viewer_id=viewer,
                       status=outcome.status, reason=outcome.reason or None,  # type: ignore[arg-type]
                       ts=now)
