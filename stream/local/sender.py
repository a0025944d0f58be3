"""The show sender: a planned broadcast posted to a gateway's `POST /v1/events`.

`run(plan)` sends the schedule `stream.local.showplan.broadcast` makes, one request per
role and batch window, retrying what the gateway may take later, with a progress bar.
Given several gateways, it spreads the viewers over them as a sticky load balancer
would: each viewer's events always go to the same gateway (by a hash of its id), and
host events, which belong to no viewer, to the first.
"""

from __future__ import annotations

import asyncio
import sys
import time
import zlib
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgspec
from tqdm import tqdm

from stream.core.auth import SENDERS, Tokens
from stream.core.codec import encode
from stream.core.models import Event, Role, StockSet, ViewerEvent
from stream.engine.watermark import INPUT_IDLE_MS
from stream.local.showplan import Plan, broadcast


class GatewayUnreachable(Exception):
    """The gateway did not answer at all (refused, no route, timed out)."""


# How long the first request may take before `run` gives up on the gateway: a
# newcomer's typo must fail within ~10 s, not after the 60 s of retries meant for a
# gateway that restarts mid-show.
PROBE_TIMEOUT_S = 5.0


async def probe(session: aiohttp.ClientSession, gateway: str) -> None:
    """Raise GatewayUnreachable unless `gateway` answers HTTP (any status) at all."""
    try:
        async with session.get(f"{gateway}/healthz",
                               timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
            await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise GatewayUnreachable(
            f"the gateway at {gateway} is not answering ({reason}): is `livecommerce up` "
            "running? Check --gateway") from exc


class SimStats(msgspec.Struct):
    """What `run` sent and what the gateway said about it."""

    events_sent: int = 0
    accepted: int = 0
    rejected: int = 0
    retries: int = 0  # requests sent again after a 5xx, a 429 or a broken connection
    by_type: dict[str, int] = {}
    errors: list[str] = []


class _Rejected(msgspec.Struct):
    index: int = -1
    error: str = ""


class _Reply(msgspec.Struct):
    accepted: int = 0
    rejected: list[_Rejected] = []


_MAX_IN_FLIGHT = 8
_MAX_BATCH = 500  # ~100 KB a request, far under the gateway's body limit
# A gateway answering 5xx or 429 (Kafka or Redis away, rate limit) is retried with
# backoff for this long: long enough to ride out a restart of either.
_RETRY_FOR_S = 60.0
_RETRY_MAX_DELAY_S = 2.0
_MAX_ERRORS = 20
# A window holds at most this much show time, even behind schedule. The next window waits
# for every lane of this one, so this bounds how far one room's platform lane can run
# ahead of its commerce lane: half the worker's INPUT_IDLE_MS (10 s of event time), the
# other half left for the gateways' own writes. Uncapped, the first window after a 4 s
# Redis outage at 10x held 44 s of show; its views reached Kafka before a retry of its
# orders, and the worker rightly fired a dwell nudge the late order would have cancelled.
MAX_WINDOW_SHOW_S = INPUT_IDLE_MS / 2 / 1000
_reply = msgspec.json.Decoder(_Reply)


class _Retryable(Exception):
    """A 5xx or 429 answer: the gateway may take it next time (after Retry-After)."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        try:
            self.retry_after = float(retry_after) if retry_after else 0.0
        except ValueError:  # an HTTP date: fall back to our own backoff
            self.retry_after = 0.0


def _tag(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


class _Sender:
    """Posts batches, in order per role and gateway; counts the gateways' verdicts."""

    def __init__(self, session: aiohttp.ClientSession, urls: Sequence[str], tokens: Tokens,
                 stats: SimStats) -> None:
        self.session = session
        self.urls = list(urls)
        self.headers = {role: {"Authorization": f"Bearer {tokens.for_role(role)}",
                               "Content-Type": "application/json"} for role in SENDERS}
        self.stats = stats
        self.slots = asyncio.Semaphore(_MAX_IN_FLIGHT)
        # One request in flight per role and gateway: a viewer's order.paid must not
        # overtake its order.placed (asyncio.Lock wakes waiters first come, first served),
        # and a viewer's events all go through one gateway, so its order holds.
        self.in_order = {(role, gw): asyncio.Lock() for role in SENDERS
                         for gw in range(len(self.urls))}
        self.tasks: set[asyncio.Task[None]] = set()

    def gateway_of(self, event: Event) -> int:
        """The gateway a viewer's events go to, by a hash of its id (crc32: the same in
        every run, unlike `hash`); the first for events of no viewer."""
        if len(self.urls) == 1 or not isinstance(event, ViewerEvent):
            return 0
        return zlib.crc32(event.viewer_id.encode()) % len(self.urls)

    async def send(self, events: Sequence[Event]) -> None:
        """Post one window's `events`: one request per role and gateway (and per
        _MAX_BATCH), order kept, and return once all are answered.

        Host events go first and are answered before the rest is sent, as in a real
        room: a viewer orders what the host pinned after the pin has reached them, so
        after the gateway logged it. Sent side by side, an order could overtake the pin
        just before it, and the worker tagged its conversion node with the pin before
        (1 such tag in about 10 kill -9 oracle runs here).

        The window ends when every lane is answered, so no lane runs ahead of another by
        more than a window: the platform and commerce backends of one room stay within
        the skew the worker waits for (the watermark's INPUT_IDLE_MS, 10 s of event
        time, and HOLD_ORDERS_S, 2 s of wall). Lanes that ran free drifted apart under
        load (52 s of show at 400x in the simulator test, one lane slow), and the worker
        could then rightly fire a dwell nudge that the trailing lane's events came too
        late to cancel. Behind schedule, the next window takes more events, up to
        MAX_WINDOW_SHOW_S of show (`_pace`)."""
        lanes: dict[tuple[Role, int], list[Event]] = {}
        for event in events:
            lanes.setdefault((type(event).role, self.gateway_of(event)), []).append(event)
        hosts = lanes.pop(("host", 0), [])
        posted = [await self._submit(("host", 0), hosts[i:i + _MAX_BATCH])
                  for i in range(0, len(hosts), _MAX_BATCH)]
        if posted:
            await asyncio.wait(posted)
        posted = [await self._submit(lane, group[i:i + _MAX_BATCH])
                  for lane, group in lanes.items() for i in range(0, len(group), _MAX_BATCH)]
        if posted:
            await asyncio.wait(posted)

    async def _submit(self, lane: tuple[Role, int], events: list[Event]) -> asyncio.Task[None]:
        # Waiting for a slot is the back-pressure: when behind, batches just grow.
        await self.slots.acquire()
        self.stats.events_sent += len(events)
        counts = Counter(_tag(e) for e in events)
        for tag, n in counts.items():
            self.stats.by_type[tag] = self.stats.by_type.get(tag, 0) + n
        task = asyncio.create_task(self._post(lane, events))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def _post(self, lane: tuple[Role, int], events: list[Event]) -> None:
        try:
            async with self.in_order[lane]:
                await self._post_with_retries(lane, events)
        except Exception as exc:  # a bug here must not kill the run; report it instead
            self._fail(events, f"{type(exc).__name__}: {exc}")
        finally:
            self.slots.release()

    async def _post_with_retries(self, lane: tuple[Role, int], events: list[Event]) -> None:
        role, gateway = lane
        url = f"{self.urls[gateway]}/v1/events"
        body = encode(events)
        last, attempt = "", 0
        give_up = time.monotonic() + _RETRY_FOR_S
        while True:
            try:
                async with self.session.post(url, data=body,
                                             headers=self.headers[role]) as resp:
                    if resp.status >= 500 or resp.status == 429:
                        raise _Retryable(f"HTTP {resp.status}", resp.headers.get("Retry-After"))
                    data = await resp.read()
                    if resp.status >= 300:
                        text = data.decode(errors="replace")[:200]
                        self._fail(events, f"HTTP {resp.status}: {text}")
                        return
            except (aiohttp.ClientError, TimeoutError, _Retryable) as exc:
                last = f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}"
                delay = min(_RETRY_MAX_DELAY_S, 0.1 * 2 ** attempt)
                if isinstance(exc, _Retryable) and exc.retry_after:
                    delay = max(delay, exc.retry_after)
                attempt += 1
                if time.monotonic() + delay > give_up:
                    self._fail(events, f"gave up after {attempt} attempts: {last}")
                    return
                self.stats.retries += 1
                await asyncio.sleep(delay)
                continue
            self._count(events, data, retried=attempt > 0)
            return

    def _count(self, events: list[Event], data: bytes, *, retried: bool) -> None:
        try:
            reply = _reply.decode(data)
        except msgspec.DecodeError as exc:
            self._fail(events, f"unreadable gateway reply: {exc}")
            return
        self.stats.accepted += reply.accepted
        for r in reply.rejected:
            # A retried batch the gateway already took the first time comes back "duplicate".
            if retried and "duplicate" in r.error.lower():
                self.stats.accepted += 1
                continue
            self.stats.rejected += 1
            where = (f"{_tag(events[r.index])} {events[r.index].event_id}"
                     if 0 <= r.index < len(events) else f"#{r.index}")
            self._note(f"{where}: {r.error}")

    def _fail(self, events: list[Event], error: str) -> None:
        self.stats.rejected += len(events)
        self._note(f"{len(events)} events: {error}")

    def _note(self, error: str) -> None:
        if len(self.stats.errors) < _MAX_ERRORS:
            self.stats.errors.append(error)


async def _pace(schedule: list[tuple[float, Event]], plan: Plan, sender: _Sender,
                bar: tqdm[Any], window_s: float) -> None:
    """Hand each event to the sender once its offset is due, a window's worth at a time;
    behind schedule, the backlog goes in windows of at most MAX_WINDOW_SHOW_S of show."""
    offsets = [o for o, _ in schedule]
    span_s = MAX_WINDOW_SHOW_S / plan.speed  # in wall seconds, as the offsets are
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    i = 0
    while i < len(schedule):
        now = loop.time() - t0
        j = bisect_right(offsets, min(now, offsets[i] + span_s), lo=i)
        if j > i:
            await sender.send([e for _, e in schedule[i:j]])
            i = j
        _advance(bar, (loop.time() - t0) * plan.speed, plan, sender.stats)
        if i < len(schedule):
            wait = offsets[i] - (loop.time() - t0)
            if wait > 0:  # behind schedule: no sleep, the next window right away
                await asyncio.sleep(min(max(wait, window_s), 0.5))


def _advance(bar: tqdm[Any], sim_s: float, plan: Plan, stats: SimStats) -> None:
    target = min(round(sim_s), round(plan.sim_s))
    if target > bar.n:
        bar.set_postfix(ok=stats.accepted, rejected=stats.rejected, refresh=False)
        bar.update(target - bar.n)


async def _wait_for_stock(session: aiohttp.ClientSession, gateway: str, room_id: str,
                          skus: set[str], *, timeout_s: float = 60.0) -> None:
    """Poll the room's stock until every SKU is loaded (the worker is consuming)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            async with session.get(f"{gateway}/v1/rooms/{room_id}/stock") as resp:
                if resp.status == 200:
                    loaded = {s["sku"] for s in (await resp.json())["skus"]}
                    if skus <= loaded:
                        return
        except aiohttp.ClientError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"stock for {sorted(skus)} not visible in {timeout_s:.0f} s: "
                               "is a worker running?")
        await asyncio.sleep(0.2)


async def run(plan: Plan, *, gateway: str | Sequence[str], tokens: Tokens,
              progress: bool = True, batch_window_s: float = 0.05) -> SimStats:
    """Send the show to `{gateway}/v1/events` on its schedule; return what happened.
    `gateway` may be several base URLs of one deployment (one set of tokens): the
    viewers are spread over them (see the module's docstring)."""
    urls = [u.rstrip("/") for u in ([gateway] if isinstance(gateway, str) else gateway)]
    if not urls:
        raise ValueError("gateway: no gateway URL given")
    schedule = broadcast(plan)
    stats = SimStats()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            await probe(session, url)
        sender = _Sender(session, urls, tokens, stats)
        # Like an operator: load the stock and see it on the gateway before going live.
        # Topics are not ordered against each other, so without this a worker that is
        # still joining may see the first orders before the stock they are for.
        opening = [e for o, e in schedule if o == 0 and isinstance(e, StockSet)]
        await sender.send(opening)
        await sender.drain()
        if not stats.rejected:  # refused stock will never show; the stats say why
            await _wait_for_stock(session, urls[0], plan.room_id,
                                  {e.sku for e in opening})
        schedule = [(o, e) for o, e in schedule if not (o == 0 and isinstance(e, StockSet))]
        # The bar counts show seconds; tqdm's rate would read "20.00s/s" at 20x, so the
        # format shows the show's clock against the wall clock instead.
        with tqdm(total=round(plan.sim_s), desc=f"broadcast {plan.room_id}",
                  bar_format=("{desc}: {percentage:3.0f}%|{bar}| show {n_fmt}/{total_fmt} s"
                              f" at {plan.speed:g}x" " [{elapsed}<{remaining}]{postfix}"),
                  file=sys.stderr, disable=not progress, leave=False) as bar:
            try:
                await _pace(schedule, plan, sender, bar, batch_window_s)
                await sender.drain()
            finally:
                sender.cancel()  # only does anything when interrupted
            _advance(bar, plan.sim_s, plan, stats)
    return stats
