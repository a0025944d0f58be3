"""The fan-out benchmark's clients: minimal asyncio SSE and WebSocket readers that time
each stock update's bytes, run in processes of their own (bench/fanout.py starts them).

    .venv/bin/python bench/fanout_clients.py --client-process '[PORT, N_WS, N_SSE, FIRST, SOURCE]'

A client process talks to its parent over stdin and stdout, one JSON line each way
(see `client_process`), and connects from its own loopback source address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import struct
import sys
import time
from collections.abc import Awaitable, Callable

import psutil

from stream.core.models import StockUpdate
from stream.gateway.fdlimit import raise_open_files

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
                      parallel: int = 200, sources: int = 1,
                      source_base: int = 2) -> list[Client]:
    """Open every client (`parallel` handshakes at a time) and wait for each snapshot.

    Client i connects from 127.0.0.(source_base + i % sources): one source address has
    only ~28,000 ephemeral ports (32768-60999) towards one server port.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(parallel)

    async def one(i: int, make: Callable[[], Client]) -> Client:
        local = (f"127.0.0.{source_base + i % sources}", 0)
        async with gate:
            for attempt in range(5):
                try:
                    _, client = await loop.create_connection(make, "127.0.0.1", port,
                                                             local_addr=local)
                    await asyncio.wait_for(client.ready, 30)
                    return client
                except (OSError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))
            raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(makers))))


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


# --- clients in processes of their own ------------------------------------------------------
# One process may hold only so many sockets (the open-file limit), and one event loop reading
# 50,000 sockets would itself be the slowest part of the measurement. Each client process
# connects its share when told "go", says {"ready": n}, and on "report SENT" answers with
# the latencies of its clients (perf_counter is CLOCK_MONOTONIC: one clock for all processes).
PER_PROCESS = 9_000


def makers_for(kind: str, n: int, first: int) -> list[Callable[[], Client]]:
    if kind == "ws":
        return [(lambda i=i: WSClient(f"/v1/rooms/{ROOM}/ws?viewer=v{i}"))
                for i in range(first, first + n)]
    return [lambda: SSEClient(f"/v1/rooms/{ROOM}/stock/stream")] * n


async def client_process(port: int, n_ws: int, n_sse: int, first: int, source: int) -> None:
    raise_open_files()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(data: object) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    say({"hello": True})
    clients: list[Client] = []
    while line := (await reader.readline()).decode().strip():
        if line == "go":
            cpu = time.process_time()
            clients = await connect_all(
                port, makers_for("ws", n_ws, first) + makers_for("sse", n_sse, first),
                parallel=500, sources=1, source_base=source)
            say({"ready": len(clients), "cpu_s": time.process_time() - cpu})
        elif line.startswith("report "):
            sent = {int(v): at for v, at in json.loads(line[7:]).items()}
            lat, missing = latencies(clients, sent)
            say({"lat": lat, "missing": missing})
        elif line == "close":
            close_all(clients)
            clients = []
            say({"closed": True})


class ClientProcesses:
    """Client processes against one server port, `PER_PROCESS` sockets each at most."""

    def __init__(self, port: int, *, n_ws: int, n_sse: int, first_source: int) -> None:
        self.port, self.n_ws, self.n_sse = port, n_ws, n_sse
        self.first_source = first_source
        self.procs: list[asyncio.subprocess.Process] = []
        self.cpu_s = 0.0  # CPU seconds the client processes spent in the last `connect`

    async def _ask(self, line: str) -> list[dict]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()
        return [await self._answer(proc) for proc in self.procs]

    @staticmethod
    async def _answer(proc: asyncio.subprocess.Process) -> dict:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client process exited ({await proc.wait()})")
        return json.loads(line)

    async def start(self) -> None:
        total = self.n_ws + self.n_sse
        n_procs = max(1, -(-total // PER_PROCESS))
        for k in range(n_procs):
            ws = self.n_ws * (k + 1) // n_procs - self.n_ws * k // n_procs
            sse = self.n_sse * (k + 1) // n_procs - self.n_sse * k // n_procs
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--client-process",
                json.dumps([self.port, ws, sse, self.n_ws * k // n_procs,
                            self.first_source + k]),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 30)
            self.procs.append(proc)
        for proc in self.procs:
            await self._answer(proc)  # hello: started and imported

    async def connect(self) -> float:
        """Every process connects its share at once; seconds until all have snapshots."""
        started = time.perf_counter()
        ready = await self._ask("go")
        assert sum(r["ready"] for r in ready) == self.n_ws + self.n_sse
        self.cpu_s = sum(r["cpu_s"] for r in ready)
        return time.perf_counter() - started

    async def report(self, sent: dict[int, float]) -> tuple[list[float], int]:
        answers = await self._ask("report " + json.dumps(sent))
        return ([x for a in answers for x in a["lat"]], sum(a["missing"] for a in answers))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._ask("close")
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def rounds(publish: Callable[[int], Awaitable[None]], n: int, *,
                 gap_s: float) -> dict[int, float]:
    """Publish `n` versions, `gap_s` apart (arrivals are counted by the clients)."""
    sent: dict[int, float] = {}
    for r in range(n):
        version = FIRST_VERSION + r
        sent[version] = time.perf_counter()
        await publish(version)
        await asyncio.sleep(gap_s)
    return sent


def update(version: int) -> StockUpdate:
    return StockUpdate(room_id=ROOM, sku=SKU, available=100_000 - version % 1000,
                       reserved=version % 1000, sold=0, version=version,
                       ts=int(time.time() * 1000))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--client-process"] or len(sys.argv) != 3:
        raise SystemExit(__doc__)
    asyncio.run(client_process(*json.loads(sys.argv[2])))
