"""Fan-out: one gateway process, 10,000 live subscribers to one room, one stock change.

    .venv/bin/python bench/fanout.py [--clients 10000] [--ws-share 0.5] [--rounds 5] [--json F]

1. A gateway runs as its own process (as in production) on a fresh embedded stack.
   This process opens `--clients` connections to one room on loopback, half SSE
   (`/stock/stream`), half WebSocket (`/ws`), and waits until every one has its snapshot.
2. Each round publishes one `StockUpdate` on the Redis channel the workers publish on,
   and times, per client, publish -> the update's bytes arriving on its socket.
3. Baseline, same run and machine: a bare asyncio server (no aiohttp, no hub) that
   writes the same SSE bytes to as many sockets, read by the same clients. The ratio
   is baseline p99 / gateway p99 (1.0 = the gateway adds nothing to the fan-out).

Clients are minimal asyncio protocols (no HTTP client library) so that the client
side, on the same 2 cores, costs as little as possible; both processes raise their
open-file limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pct, system

from stream.core.codec import encode
from stream.core.models import StockUpdate
from stream.gateway.fdlimit import raise_open_files
from stream.store import keys

ROOM = "fanout-room"
SKU = "hot-sku"
FIRST_VERSION = 1_000_000  # above any snapshot's, so a round's version is unambiguous
_VERSION = re.compile(rb'"version":(\d+)')


class Client(asyncio.Protocol):
    """Records when each stock version first arrives. Subclasses frame the bytes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.seen: dict[int, float] = {}
        self._header_done = False
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the snapshot: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._header_done:
            self._buffer += data
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if b" 200 " not in head.split(b"\r\n", 1)[0] and b" 101 " not in head[:20]:
                self.ready.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))
                return
            self._header_done, self._buffer, data = True, b"", rest
        self.body(data, now)

    def body(self, data: bytes, now: float) -> None:
        if not self.ready.done() and b"snapshot" in data:
            self.ready.set_result(None)
        for match in _VERSION.finditer(data):
            version = int(match[1])
            if version >= FIRST_VERSION:
                self.seen.setdefault(version, now)


class SSEClient(Client):
    # HTTP/1.0: the body is the raw event stream, no chunked framing to undo.
    def __init__(self, path: str) -> None:
        super().__init__(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())


class WSClient(Client):
    """A WebSocket client just big enough: handshake, text frames, answers pings."""

    def __init__(self, path: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        super().__init__((f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self._frames = b""

    def body(self, data: bytes, now: float) -> None:
        self._frames += data
        while len(self._frames) >= 2:
            opcode, length = self._frames[0] & 0x0F, self._frames[1] & 0x7F
            start = 2
            if length == 126:
                if len(self._frames) < 4:
                    return
                length, start = struct.unpack(">H", self._frames[2:4])[0], 4
            elif length == 127:
                if len(self._frames) < 10:
                    return
                length, start = struct.unpack(">Q", self._frames[2:10])[0], 10
            if len(self._frames) < start + length:
                return
            payload = self._frames[start:start + length]
            self._frames = self._frames[start + length:]
            if opcode == 0x9 and self.transport is not None:  # ping -> masked pong
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 0x1:
                super().body(payload, now)


async def connect_all(port: int, makers: list[Callable[[], Client]], *,
                      parallel: int = 200) -> list[Client]:
    """Open every client (`parallel` handshakes at a time) and wait for each snapshot."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(parallel)

    async def one(make: Callable[[], Client]) -> Client:
        async with gate:
            for attempt in range(5):
                try:
                    _, client = await loop.create_connection(make, "127.0.0.1", port)
                    await asyncio.wait_for(client.ready, 30)
                    return client
                except (OSError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))
            raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(m) for m in makers)))


def close_all(clients: list[Client]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.close()


def latencies(clients: list[Client], sent: dict[int, float]) -> tuple[list[float], int]:
    """Per client and round: ms from publish to arrival; and how many (client, round)
    pairs never arrived."""
    out, missing = [], 0
    for client in clients:
        for version, at in sent.items():
            got = client.seen.get(version)
            if got is None:
                missing += 1
            else:
                out.append((got - at) * 1000)
    return out, missing


async def rounds(clients: list[Client], publish: Callable[[int], Awaitable[None]], n: int, *,
                 gap_s: float, settle_s: float) -> tuple[list[float], int]:
    sent: dict[int, float] = {}
    for r in range(n):
        version = FIRST_VERSION + r
        sent[version] = time.perf_counter()
        await publish(version)
        deadline = time.perf_counter() + settle_s
        while (sum(version in c.seen for c in clients) < len(clients)
               and time.perf_counter() < deadline):
            await asyncio.sleep(0.01)
        await asyncio.sleep(gap_s)
    return latencies(clients, sent)


def update(version: int) -> StockUpdate:
    return StockUpdate(room_id=ROOM, sku=SKU, available=100_000 - version % 1000,
                       reserved=version % 1000, sold=0, version=version,
                       ts=int(time.time() * 1000))


async def gateway_fanout(n_clients: int, ws_share: float, n_rounds: int) -> dict:
    async with system(workers=0) as sys_:
        port = sys_.settings.http_port
        n_ws = round(n_clients * ws_share)
        makers: list[Callable[[], Client]] = [
            (lambda i=i: WSClient(f"/v1/rooms/{ROOM}/ws?viewer=v{i}")) for i in range(n_ws)]
        makers += [lambda: SSEClient(f"/v1/rooms/{ROOM}/stock/stream")] * (n_clients - n_ws)
        started = time.perf_counter()
        clients = await connect_all(port, makers)
        connect_s = time.perf_counter() - started

        async def publish(version: int) -> None:
            await sys_.redis.publish(keys.STOCK_CHANNEL, encode([update(version)]))

        lat, missing = await rounds(clients, publish, n_rounds, gap_s=1.0, settle_s=10.0)
        close_all(clients)
    return {"clients": n_clients, "ws": n_ws, "sse": n_clients - n_ws,
            "connect_s": round(connect_s, 1), "lat": lat, "missing": missing}


async def serve_raw() -> None:
    """The floor, as its own process: a bare asyncio server that writes pre-encoded SSE
    bytes to every socket when told a version on its control connection (stdin-like)."""
    raise_open_files()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if request.startswith(b"CONTROL"):
            while line := await reader.readline():
                frame = b"event: stock\ndata: " + encode(update(int(line))) + b"\n\n"
                for w in writers:  # what the hub does, minus everything else
                    w.write(frame)
            return
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                     b"event: snapshot\ndata: {}\n\n")
        writers.append(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed


async def raw_fanout(n_clients: int, n_rounds: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-raw", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        _, control = await asyncio.open_connection("127.0.0.1", port)
        control.write(b"CONTROL\r\n\r\n")
        clients = await connect_all(
            port, [lambda: SSEClient(f"/v1/rooms/{ROOM}/stock/stream")] * n_clients)

        async def publish(version: int) -> None:
            control.write(b"%d\n" % version)
            await control.drain()

        lat, missing = await rounds(clients, publish, n_rounds, gap_s=1.0, settle_s=10.0)
        close_all(clients)
        control.close()
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)
    return {"lat": lat, "missing": missing}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--ws-share", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        await serve_raw()
        return
    limit = raise_open_files()
    if limit < args.clients + 500:
        sys.exit(f"open-file limit {limit} < {args.clients + 500}: raise `ulimit -Hn`")
    gw = await gateway_fanout(args.clients, args.ws_share, args.rounds)
    print(f"gateway: received {len(gw['lat']):,}; p99 "
          f"{pct(gw['lat'], 99) if gw['lat'] else None} ms", file=sys.stderr)
    raw = await raw_fanout(args.clients, args.rounds)
    expected = args.clients * args.rounds
    lat = gw["lat"]
    figures = {
        "clients": args.clients, "ws": gw["ws"], "sse": gw["sse"], "rounds": args.rounds,
        "connect_s": gw["connect_s"],
        "received": len(lat), "expected": expected,
        "p50_ms": round(pct(lat, 50), 1) if lat else None,
        "p99_ms": round(pct(lat, 99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "raw_p99_ms": round(pct(raw["lat"], 99), 1) if raw["lat"] else None,
        "raw_received": len(raw["lat"]),
    }
    figures["ratio"] = (round(figures["raw_p99_ms"] / figures["p99_ms"], 3)
                        if figures["p99_ms"] and figures["raw_p99_ms"] else None)
    print(f"{args.clients:,} subscribers ({gw['ws']:,} WebSocket, {gw['sse']:,} SSE) on one "
          f"gateway, connected in {gw['connect_s']} s")
    print(f"stock change -> every socket, {args.rounds} rounds: received {len(lat):,} of "
          f"{expected:,}; p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
          f"max {figures['max_ms']} ms (target p99 <= 1000 ms)")
    print(f"bare asyncio server, same bytes to as many sockets: p99 {figures['raw_p99_ms']} ms "
          f"(received {len(raw['lat']):,} of {expected:,})")
    emit(figures, args.json)


if __name__ == "__main__":
    asyncio.run(main())
