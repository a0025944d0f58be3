"""Nudges to the viewer's own WebSocket: workers publish them on a Redis channel, each
gateway hands every one to the sockets of that viewer in that room, if any."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import orjson

from stream.core.models import Nudge
from stream.gateway.routes import Send

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder(Nudge).decode


class NudgeRelay:
    """Per-viewer queues, bounded: a viewer who is not reading loses old nudges, not us."""

    def __init__(self, *, queue_size: int = 8) -> None:
        self._queue_size = queue_size
        self._viewers: dict[tuple[str, str], set[asyncio.Queue[str]]] = {}

    def on_payload(self, data: bytes) -> None:
        try:
            nudge = _decode(data)
        except msgspec.DecodeError as exc:
            log.warning("nudge relay: dropped a malformed message: %s", exc)
            return
        queues = self._viewers.get((nudge.room_id, nudge.viewer_id))
        if not queues:
            return
        text = orjson.dumps({"type": "nudge", **msgspec.structs.asdict(nudge)}).decode()
        for queue in queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(text)

    async def feed(self, room_id: str, viewer_id: str, send: Send) -> None:
        """The WebSocket hook: forward this viewer's nudges until cancelled."""
        queue: asyncio.Queue[str] = asyncio.Queue(self._queue_size)
        key = (room_id, viewer_id)
        self._viewers.setdefault(key, set()).add(queue)
        try:
            while True:
                await send(await queue.get())
        finally:
            with contextlib.suppress(KeyError):
                self._viewers[key].discard(queue)
                if not self._viewers[key]:
                    del self._viewers[key]

    def listeners(self) -> int:
        return sum(len(q) for q in self._viewers.values())
