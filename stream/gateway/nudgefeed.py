"""Nudges to the viewer's own WebSocket, each shown once, even across a reconnect.

Workers hold every nudge for its viewer in Redis and publish it on a channel
(stream/store/nudgebox.py). A gateway with a socket of that viewer in that room claims
it (one script: marked shown, the held copy dropped) and sends it to one socket, the
newest (the tab the viewer opened last); one without leaves it held. A viewer's socket
that opens first drains what is held for them. So two tabs, two gateways, a gateway
restart or a republished nudge never show it twice; a nudge nobody claims within the
hold time is counted as expired by the sweep here, which any number of gateways may run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
import orjson
from redis.exceptions import RedisError

from stream.core.models import Nudge
from stream.gateway.routes import Send
from stream.store.nudgebox import NudgeBox, nudge_id

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder(Nudge).decode

# How often each gateway expires held nudges: a count a second late is still exact.
SWEEP_EVERY_S = 1.0
# How long a gateway's stop waits for a sweep under way: its calls take milliseconds,
# and a Redis that does not answer must not hold the shutdown (its grace is 10 s).
STOP_SWEEP_S = 2.0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_outcome(task: asyncio.Task[int]) -> None:
    """Mark a task's outcome seen: a sweep cut short at a stop is nothing to report."""
    if not task.cancelled():
        task.exception()


def message(nudge: Nudge) -> str:
    """The WebSocket message of a nudge: its fields, its `id` and `"type": "nudge"`."""
    return orjson.dumps({"type": "nudge", "id": nudge_id(nudge),
                         **msgspec.structs.asdict(nudge)}).decode()


class NudgeRelay:
    """Per-viewer queues, bounded: a viewer who is not reading loses old nudges, not us."""

    def __init__(self, box: NudgeBox | None = None, *, queue_size: int = 8) -> None:
        self._box = box
        self._queue_size = queue_size
        # Insertion-ordered: the last queue is the viewer's newest socket.
        self._viewers: dict[tuple[str, str], dict[asyncio.Queue[str], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[int] | None = None  # the sweep's current Redis call

    def on_payload(self, data: bytes) -> None:
        try:
            nudge = _decode(data)
        except msgspec.DecodeError as exc:
            log.warning("nudge relay: dropped a malformed message: %s", exc)
            return
        if not self._viewers.get((nudge.room_id, nudge.viewer_id)):
            return  # held in Redis for whichever gateway the viewer reconnects to
        if self._box is None:
            self._put(nudge)
            return
        task = asyncio.get_running_loop().create_task(self._claim(nudge))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim(self, nudge: Nudge) -> None:
        assert self._box is not None
        now = _now_ms()
        try:
            answer = await self._box.claim(nudge, now_ms=now)
            if answer == 1 and not self._put(nudge):
                # The viewer's socket closed while we claimed: theirs again next time.
                await self._box.release(nudge, held_at_ms=now)
        except RedisError as exc:
            # Still held in Redis: the viewer's next connect drains it.
            log.warning("nudge relay: could not claim a nudge (%r); left held", exc)

    def _put(self, nudge: Nudge) -> bool:
        queues = self._viewers.get((nudge.room_id, nudge.viewer_id))
        if not queues:
            return False
        queue = next(reversed(queues))
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(message(nudge))
        return True

    async def feed(self, room_id: str, viewer_id: str, send: Send) -> None:
        """The WebSocket hook: what was held for this viewer, then their nudges as they
        come, until cancelled."""
        queue: asyncio.Queue[str] = asyncio.Queue(self._queue_size)
        key = (room_id, viewer_id)
        # Registered before draining: a nudge published meanwhile is claimed live, one
        # drained is shown, the script decides which; none falls between the two.
        self._viewers.setdefault(key, {})[queue] = None
        try:
            if self._box is not None:
                try:
                    # Shielded: redis-py can swallow a cancel that lands mid-command,
                    # which would leave this feed (and the socket's handler) running.
                    held = await asyncio.shield(
                        self._box.drain(room_id, viewer_id, now_ms=_now_ms()))
                except RedisError as exc:
                    log.warning("nudge relay: could not read held nudges (%r)", exc)
                    held = []
                for data in held:
                    await send(message(_decode(data)))
            while True:
                await send(await queue.get())
        finally:
            with contextlib.suppress(KeyError):
                self._viewers[key].pop(queue, None)
                if not self._viewers[key]:
                    del self._viewers[key]

    def listeners(self) -> int:
        return sum(len(q) for q in self._viewers.values())

    # --- the expiry sweep -------------------------------------------------------------------

    async def start(self) -> None:
        if self._box is not None and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="nudge-sweep")

    async def stop(self) -> None:
        tasks = [t for t in [self._sweeper, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sweeper = None
        sweeping, self._sweeping = self._sweeping, None
        if sweeping is not None:
            # The shielded call runs on past the cancel: let it finish (one script per
            # room that held a nudge lately), so it does not outlive the Redis client,
            # but hold the stop no longer than STOP_SWEEP_S; its outcome is read here,
            # whenever it comes, so it never dies unseen.
            sweeping.add_done_callback(_read_outcome)
            await asyncio.wait([sweeping], timeout=STOP_SWEEP_S)
            sweeping.cancel()

    async def _sweep(self) -> None:
        assert self._box is not None
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                # Shielded: redis-py can swallow a cancel that lands mid-command, and
                # this loop would then outlive `stop` (and hang the gateway's shutdown).
                self._sweeping = asyncio.ensure_future(self._box.sweep(now_ms=_now_ms()))
                await asyncio.shield(self._sweeping)
            except RedisError as exc:
                log.warning("nudge relay: expiry sweep failed (%r); next in %.0f s", exc,
                            SWEEP_EVERY_S)
