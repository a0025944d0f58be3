"""Fan-out: one gateway process, 50,000 live subscribers to one room, one stock change;
then a connect storm.

    .venv/bin/python bench/fanout.py [--clients 50000] [--ws-share 0.5] [--rounds 5]
                                     [--storm 10000] [--json F]

1. A gateway runs as its own process (as in production) on a fresh embedded stack.
   Client processes (at most 9,000 sockets each, from their own loopback source address:
   one address has ~28,000 ephemeral ports) open `--clients` connections to one room,
   half SSE (`/stock/stream`), half WebSocket (`/ws`), and wait for every snapshot.
2. Each round publishes one `StockUpdate` on the Redis channel the workers publish on;
   the client processes time, per client, publish -> the update's bytes on its socket.
3. The connect storm: `--storm` new WebSocket subscribers all at once (500 handshakes
   in flight per client process); `connects_per_s` is how many were served (snapshot
   received) per second, and the gateway's `lc_stock_snapshots_total{source="redis"}`
   shows that their snapshots came from the hub's room cache.
4. Baseline, same run and machine: a bare asyncio server (no aiohttp, no hub) that
   writes the same SSE bytes to as many sockets, read by the same clients. The ratio
   is baseline p99 / gateway p99 (1.0 = the gateway adds nothing to the fan-out).

The clients and their processes are in bench/fanout_clients.py. Every process raises its
open-file limit; where the hard limit cannot be raised (no CAP_SYS_RESOURCE) the run
shrinks to what fits and the figures say so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aiohttp
import orjson
from common import emit, pct, system
from fanout_clients import ROOM, SKU, ClientProcesses, cpu_s, rounds, update

from stream.core.codec import encode
from stream.gateway.fdlimit import raise_open_files
from stream.store import keys


async def snapshots_from_redis(url: str) -> float:
    """The gateway's count of snapshots it read from Redis (not from its room cache)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    match = re.search(r'^lc_stock_snapshots_total\{source="redis"\} ([0-9.e+]+)$', text, re.M)
    return float(match[1]) if match else 0.0


async def gateway_fanout(n_clients: int, ws_share: float, n_rounds: int,
                         storm: int, *, profile: Path | None = None) -> dict:
    async with system(workers=0) as sys_:
        port = sys_.settings.http_port
        n_ws = round(n_clients * ws_share)
        lat: list[float] = []
        connect_s, missing = 0.0, 0
        if n_clients:
            clients = ClientProcesses(port, n_ws=n_ws, n_sse=n_clients - n_ws, first_source=2)
            await clients.start()
            try:
                connect_s = await clients.connect()

                async def publish(version: int) -> None:
                    await sys_.redis.publish(keys.STOCK_CHANNEL, encode([update(version)]))

                sent = await rounds(publish, n_rounds, gap_s=1.5)
                lat, missing = await clients.report(sent)
            finally:
                await clients.stop()
        # The connect storm: that many new WebSocket viewers at once, on other source
        # addresses; their snapshots should come from the hub's room cache.
        storm_s, storm_reads, storm_cpu = None, None, 0.0
        if storm:
            if n_clients:
                await asyncio.sleep(2.0)  # the gateway notices the closed sockets
            crowd = ClientProcesses(port, n_ws=storm, n_sse=0, first_source=40)
            await crowd.start()
            try:
                before = await snapshots_from_redis(sys_.url)
                async with profiled(sys_.gateway_pid, profile):
                    cpu = cpu_s(sys_.gateway_pid)
                    storm_s = await crowd.connect()
                    storm_cpu = cpu_s(sys_.gateway_pid) - cpu
                storm_reads = await snapshots_from_redis(sys_.url) - before
            finally:
                await crowd.stop()
    return {"clients": n_clients, "ws": n_ws, "sse": n_clients - n_ws,
            "connect_s": round(connect_s, 1), "lat": lat, "missing": missing,
            "storm": storm, "storm_s": storm_s, "storm_redis_reads": storm_reads,
            "storm_cpu_s": storm_cpu if storm else None,
            "storm_client_cpu_s": crowd.cpu_s if storm else None}


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_WS_KEY = re.compile(rb"Sec-WebSocket-Key: *([A-Za-z0-9+/=]+)", re.I)


def raw_ws_answer(request: bytes) -> bytes:
    """The bare server's answer to a WebSocket upgrade: the headers aiohttp sends (101,
    the accept key, Date, Server) and one text frame holding a snapshot of the same size
    as the gateway's, so the storm's baseline costs the clients what the gateway's does."""
    match = _WS_KEY.search(request)
    key = match[1] if match else b""
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    snapshot = orjson.dumps({"type": "snapshot", "room_id": ROOM, "skus": [
        {"sku": SKU, "available": 100_000, "reserved": 0, "sold": 0, "version": 1}]})
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
            b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
            b"Server: Python/3.11 aiohttp/3\r\n\r\n"
            + bytes([0x81, len(snapshot)]) + snapshot)


async def serve_raw() -> None:
    """The floor, as its own process: a bare asyncio server that writes pre-encoded SSE
    bytes to every socket when told a version on its control connection (stdin-like),
    and answers a WebSocket upgrade with the handshake and a snapshot (the storm's floor)."""
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
        writers.append(writer)
        if b"Upgrade: websocket" in request:
            writer.write(raw_ws_answer(request))
        else:
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                         b"event: snapshot\ndata: {}\n\n")
        # Hold the socket until its client closes, then let it go, as the gateway does:
        # kept open, the 19,000 of the fan-out and the 10,000 of the storm after it
        # passed the open-file limit of 20,000 here, and accept() failed in a loop.
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writers.remove(writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed


async def raw_fanout(n_clients: int, n_rounds: int, storm: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-raw", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    lat: list[float] = []
    connect_s, storm_s, storm_cpu = None, None, 0.0
    crowd = None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        _, control = await asyncio.open_connection("127.0.0.1", port)
        control.write(b"CONTROL\r\n\r\n")
        if n_clients:
            clients = ClientProcesses(port, n_ws=0, n_sse=n_clients, first_source=20)
            await clients.start()
            try:
                connect_s = await clients.connect()

                async def publish(version: int) -> None:
                    control.write(b"%d\n" % version)
                    await control.drain()

                sent = await rounds(publish, n_rounds, gap_s=1.5)
                lat, missing = await clients.report(sent)
            finally:
                await clients.stop()
        if storm:  # the same crowd as the gateway's, on the same kind of processes
            if n_clients:
                await asyncio.sleep(2.0)  # the server notices the closed sockets
            crowd = ClientProcesses(port, n_ws=storm, n_sse=0, first_source=60)
            await crowd.start()
            try:
                cpu = cpu_s(proc.pid)
                storm_s = await crowd.connect()
                storm_cpu = cpu_s(proc.pid) - cpu
            finally:
                await crowd.stop()
        control.close()
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)
    return {"lat": lat, "missing": missing if n_clients else 0, "connect_s": connect_s,
            "storm_s": storm_s, "storm_cpu_s": storm_cpu if storm else None,
            "storm_client_cpu_s": crowd.cpu_s if crowd else None}


@contextlib.asynccontextmanager
async def profiled(pid: int, out: Path | None) -> AsyncIterator[None]:
    """py-spy on process `pid` while the block runs (raw collapsed stacks into `out`)."""
    if out is None:
        yield
        return
    spy = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
        "--rate", "250", "--format", "raw", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1.0)  # attached before the first connect
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        await spy.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50_000)
    parser.add_argument("--ws-share", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storm", type=int, default=10_000,
                        help="new WebSocket subscribers connecting at once (0: none)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile-storm", type=Path, metavar="FILE",
                        help="py-spy the gateway during its storm (raw stacks into FILE; "
                             "needs `pip install py-spy`, not a dependency)")
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        await serve_raw()
        return
    # The gateway is one process: it needs a descriptor per subscriber, and a process
    # may not go past the hard limit without CAP_SYS_RESOURCE (fdlimit.py tries).
    limit = raise_open_files(args.clients + args.storm + 1000)
    fits = limit - 1000
    clients, storm = min(args.clients, fits), min(args.storm, fits)
    if clients < args.clients or storm < args.storm:
        print(f"open-file limit {limit} (hard, not raisable here): {clients:,} subscribers "
              f"and a storm of {storm:,} instead of {args.clients:,} and {args.storm:,}",
              file=sys.stderr)
    gw = await gateway_fanout(clients, args.ws_share, args.rounds, storm,
                              profile=args.profile_storm)
    print(f"gateway: received {len(gw['lat']):,}; p99 "
          f"{pct(gw['lat'], 99) if gw['lat'] else None} ms; storm {gw['storm_s']} s",
          file=sys.stderr)
    raw = await raw_fanout(clients, args.rounds, storm)
    expected = clients * args.rounds
    lat = gw["lat"]
    figures = {
        "clients": clients, "asked_clients": args.clients, "open_file_limit": limit,
        "ws": gw["ws"], "sse": gw["sse"], "rounds": args.rounds,
        "connect_s": gw["connect_s"],
        "received": len(lat), "expected": expected,
        "p50_ms": round(pct(lat, 50), 1) if lat else None,
        "p99_ms": round(pct(lat, 99), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "raw_p99_ms": round(pct(raw["lat"], 99), 1) if raw["lat"] else None,
        "raw_received": len(raw["lat"]),
        # The same clients connecting to the bare server: what this machine's loopback,
        # kernel and client processes allow at all (the storm's baseline).
        "raw_connects_per_s": round(clients / raw["connect_s"]) if raw["connect_s"] else None,
        "storm": gw["storm"], "asked_storm": args.storm,
        "storm_s": round(gw["storm_s"], 2) if gw["storm_s"] else None,
        "connects_per_s": round(gw["storm"] / gw["storm_s"]) if gw["storm_s"] else None,
        "storm_redis_reads": gw["storm_redis_reads"],
        # The same storm (clients, processes, handshake bytes and snapshot size) against
        # the bare server: the ceiling of the load generator on this machine.
        "raw_storm_s": round(raw["storm_s"], 2) if raw["storm_s"] else None,
        "raw_storm_connects_per_s": round(storm / raw["storm_s"]) if raw["storm_s"] else None,
        # CPU per connect (user + system, microseconds): less noisy than a rate on a
        # shared machine, and it says which side of the loopback the time goes to.
        "storm_cpu_us": round(gw["storm_cpu_s"] / storm * 1e6) if storm else None,
        "storm_client_cpu_us": round(gw["storm_client_cpu_s"] / storm * 1e6) if storm else None,
        "raw_storm_cpu_us": round(raw["storm_cpu_s"] / storm * 1e6) if storm else None,
        "raw_storm_client_cpu_us": (round(raw["storm_client_cpu_s"] / storm * 1e6)
                                    if storm else None),
    }
    figures["storm_ratio"] = (
        round(figures["connects_per_s"] / figures["raw_storm_connects_per_s"], 3)
        if figures["connects_per_s"] and figures["raw_storm_connects_per_s"] else None)
    figures["ratio"] = (round(figures["raw_p99_ms"] / figures["p99_ms"], 3)
                        if figures["p99_ms"] and figures["raw_p99_ms"] else None)
    print(f"{clients:,} subscribers ({gw['ws']:,} WebSocket, {gw['sse']:,} SSE) on one "
          f"gateway, connected in {gw['connect_s']} s")
    print(f"stock change -> every socket, {args.rounds} rounds: received {len(lat):,} of "
          f"{expected:,}; p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
          f"max {figures['max_ms']} ms (target p99 <= 500 ms)")
    print(f"bare asyncio server, same bytes to as many sockets: p99 {figures['raw_p99_ms']} ms "
          f"(received {len(raw['lat']):,} of {expected:,})")
    if storm:
        print(f"connect storm: {storm:,} new WebSocket subscribers in {figures['storm_s']} s = "
              f"{figures['connects_per_s']:,}/s (target >= 5,000/s); snapshots read from "
              f"Redis meanwhile: {figures['storm_redis_reads']:.0f}; the same storm on the bare "
              f"server: {figures['raw_storm_connects_per_s']:,}/s (ratio "
              f"{figures['storm_ratio']}); CPU per connect: gateway "
              f"{figures['storm_cpu_us']} us (bare server {figures['raw_storm_cpu_us']} us), "
              f"clients {figures['storm_client_cpu_us']} us "
              f"({figures['raw_storm_client_cpu_us']} us on the bare server)")
    emit(figures, args.json)


if __name__ == "__main__":
    asyncio.run(main())
