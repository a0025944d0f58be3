"""The stock feed alone: how long a change waits in the coalescer, tick against armed timer.

    .venv/bin/python bench/stockfeed.py [--rate 1000] [--seconds 5] [--interval-ms 100]

One SKU changes `--rate` times a second, in batches every 10 ms (as the worker's
`take()` delivers them at 1,000 orders/s); each batch offers its changes and flushes
(the leading edge). Two ways to send the held ones (the trailing edge), in turn, in
one process, with no Kafka or Redis: what issue 19 changed and nothing else.

- `tick`: a flush every 20 ms, as the worker did before issue 19 (`FLUSH_EVERY_S`);
- `armed`: `StockFeed.trailing`, woken by a timer armed for the moment one is due.

For each change: the time from its offer to the publish of a version at least as new.
The floor is the interval (a change just after a send waits for the next one).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe, emit, pct

from stream.core.models import StockUpdate
from stream.worker.stockfeed import StockFeed

BATCH_EVERY_S = 0.01
TICK_S = 0.02


async def measure(mode: str, *, rate: int, seconds: float, interval_s: float) -> list[float]:
    offered: list[tuple[int, float]] = []  # (version, when)
    published: list[tuple[int, float]] = []

    async def publish(updates: list[StockUpdate]) -> None:
        published.extend((u.version, time.monotonic()) for u in updates)

    feed = StockFeed(publish, clock=time.monotonic, interval_s=interval_s)

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await feed.flush()

    sender = asyncio.create_task(tick() if mode == "tick" else feed.trailing())
    per_batch = max(1, round(rate * BATCH_EVERY_S))
    version = 0
    start = time.monotonic()
    for n in range(int(seconds / BATCH_EVERY_S)):
        batch = []
        for _ in range(per_batch):
            version += 1
            batch.append(StockUpdate(room_id="r", sku="hot", available=10**9 - version,
                                     reserved=version, sold=0, version=version, ts=0))
        now = time.monotonic()
        offered += [(u.version, now) for u in batch]
        feed.offer(batch)
        await feed.flush()
        await asyncio.sleep(max(0.0, start + (n + 1) * BATCH_EVERY_S - time.monotonic()))
    while not published or published[-1][0] < version:
        await asyncio.sleep(0.01)
    sender.cancel()
    out = []
    sent = iter(published)
    at_version, at = next(sent)
    for v, when in offered:
        while at_version < v:
            at_version, at = next(sent)
        out.append((at - when) * 1000)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures: dict[str, object] = {"rate_per_s": args.rate, "interval_ms": args.interval_ms}
    for mode in ("tick", "armed"):
        lat = await measure(mode, rate=args.rate, seconds=args.seconds,
                            interval_s=args.interval_ms / 1000)
        print(f"{mode}: offer -> publish {describe(lat)}")
        figures[f"{mode}_p50_ms"] = round(pct(lat, 50), 1)
        figures[f"{mode}_p99_ms"] = round(pct(lat, 99), 1)
        figures[f"{mode}_max_ms"] = round(max(lat), 1)
    emit(figures, args.json)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main())
    else:
        uvloop.run(main())
