"""The broadcast simulator: a deterministic, valid, realistic show; and `run` against a stub."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from stream.core.auth import Tokens
from stream.core.codec import decode_events, encode
from stream.core.models import (
    BroadcastEnded,
    BroadcastStarted,
    Comment,
    Event,
    HostEvent,
    OrderCancelled,
    OrderEvent,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    ProductViewed,
    SegmentStarted,
    StockSet,
    ViewerEvent,
    ViewerJoined,
    ViewerLeft,
)
from stream.local.demo import simulate
from stream.local.sender import MAX_WINDOW_SHOW_S, SimStats, _Sender, run
from stream.local.showplan import DEFAULT_PRODUCTS, Plan, broadcast, plan_for

NOW = 1_767_225_600_000  # 2026-01-01, fixed so plans are reproducible
ID = re.compile(r"^[A-Za-z0-9._:@\-]+$")
KEYWORDS = ("宝宝能吃吗", "小包装", "怎么吃", "多少钱")
Schedule = list[tuple[float, Event]]


def _plan(**kw: Any) -> Plan:
    kw.setdefault("now_ms", NOW)
    return plan_for(**kw)


@pytest.fixture(scope="module")
def small() -> tuple[Plan, Schedule]:
    plan = _plan(viewers=200, duration_s=30, speed=20, seed=7)
    return plan, broadcast(plan)


@pytest.fixture(scope="module")
def big() -> tuple[Plan, Schedule]:
    """2,000 viewers over a one-hour show: enough for the statistics to settle."""
    plan = _plan(viewers=2000, duration_s=30, speed=120, seed=3)
    return plan, broadcast(plan)


def _by_viewer(schedule: Schedule) -> dict[str, list[ViewerEvent]]:
    out: dict[str, list[ViewerEvent]] = defaultdict(list)
    for _, event in schedule:
        if isinstance(event, ViewerEvent):
            out[event.viewer_id].append(event)
    return out


# --- determinism ------------------------------------------------------------------------

def test_same_seed_same_show() -> None:
    plan = _plan(viewers=50, seed=11)
    assert broadcast(plan) == broadcast(_plan(viewers=50, seed=11))


def test_other_seed_other_show_and_ids() -> None:
    a, b = broadcast(_plan(viewers=50, seed=1)), broadcast(_plan(viewers=50, seed=2))
    assert a != b
    assert not {e.event_id for _, e in a} & {e.event_id for _, e in b}
    orders = [{e.order_id for _, e in s if isinstance(e, OrderEvent)} for s in (a, b)]
    assert not orders[0] & orders[1]


def test_plan_for_puts_the_show_in_the_past() -> None:
    plan = _plan(duration_s=30, speed=20)
    assert plan.start_ms == NOW - 600_000
    assert plan.products == DEFAULT_PRODUCTS and plan.products is not DEFAULT_PRODUCTS


def test_plan_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="speed"):
        _plan(speed=0)


# --- validity ---------------------------------------------------------------------------

def test_every_event_validates(small: tuple[Plan, Schedule]) -> None:
    _, schedule = small
    decoded = decode_events(encode([e for _, e in schedule]))
    assert not decoded.rejected
    assert len(decoded.events) == len(schedule)


def test_ids_unique_and_well_formed(big: tuple[Plan, Schedule]) -> None:
    _, schedule = big
    ids = [e.event_id for _, e in schedule]
    assert len(set(ids)) == len(ids)
    placed = [e.order_id for _, e in schedule if isinstance(e, OrderPlaced)]
    assert len(set(placed)) == len(placed)
    others = [e.viewer_id for _, e in schedule if isinstance(e, ViewerEvent)] + placed
    assert all(ID.match(i) and len(i) <= 64 for i in others)


def test_offsets_and_timestamps_in_range(small: tuple[Plan, Schedule]) -> None:
    plan, schedule = small
    offsets = [o for o, _ in schedule]
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0 and offsets[-1] <= plan.duration_s
    end_ms = plan.start_ms + 600_000
    assert all(plan.start_ms <= e.ts <= end_ms for _, e in schedule)
    assert [e.ts for _, e in schedule] == sorted(e.ts for _, e in schedule)
    for offset, event in schedule:  # wall offset and event time tell the same story
        assert abs((event.ts - plan.start_ms) / 1000 / plan.speed - offset) < 0.001


# --- structure --------------------------------------------------------------------------

def test_host_events_frame_the_show(small: tuple[Plan, Schedule]) -> None:
    plan, schedule = small
    host = [e for _, e in schedule if isinstance(e, HostEvent)]
    assert isinstance(host[0], BroadcastStarted)
    assert isinstance(host[-1], BroadcastEnded)
    assert isinstance(schedule[-1][1], BroadcastEnded)
    stock = [e for e in host if isinstance(e, StockSet)]
    assert [s.sku for s in stock] == [p.sku for p in plan.products]
    assert all(s.ts == plan.start_ms and s.name and s.price for s in stock)
    kinds = [e.segment for e in host if isinstance(e, SegmentStarted)]
    assert kinds[:4] == ["intro", "demo", "promo", "qa"]


def test_viewer_joins_first_and_leaves_last(big: tuple[Plan, Schedule]) -> None:
    _, schedule = big
    for events in _by_viewer(schedule).values():
        assert isinstance(events[0], ViewerJoined)
        assert not any(isinstance(e, ViewerJoined) for e in events[1:])
        left = [i for i, e in enumerate(events) if isinstance(e, ViewerLeft)]
        assert left in ([], [len(events) - 1])


def test_order_outcomes_follow_their_order(big: tuple[Plan, Schedule]) -> None:
    _, schedule = big
    placed: dict[str, OrderPlaced] = {}
    outcomes: dict[str, int] = defaultdict(int)
    for _, event in schedule:
        if isinstance(event, OrderPlaced):
            assert event.order_id not in placed
            placed[event.order_id] = event
        elif isinstance(event, OrderPaid | OrderCancelled | OrderPaymentFailed):
            order = placed[event.order_id]  # KeyError: an outcome before its order
            assert order.viewer_id == event.viewer_id and order.ts <= event.ts
            outcomes[event.order_id] += 1
    assert max(outcomes.values()) == 1
    prices = {p.sku: p.price for p in DEFAULT_PRODUCTS}
    for order in placed.values():
        assert 1 <= len(order.items) <= 2
        assert all(1 <= i.qty <= 2 and i.price == prices[i.sku] for i in order.items)


# --- realism ----------------------------------------------------------------------------

def _watch_times(plan: Plan, schedule: Schedule) -> list[float]:
    end = plan.start_ms + plan.sim_s * 1000
    times = []
    for events in _by_viewer(schedule).values():
        last = events[-1].ts if isinstance(events[-1], ViewerLeft) else end
        times.append((last - events[0].ts) / 1000)
    return times


def test_watch_depth_is_mostly_short_with_a_long_tail(big: tuple[Plan, Schedule]) -> None:
    times = _watch_times(*big)
    assert len(times) == 2000
    assert sum(t < 300 for t in times) / len(times) > 0.5
    assert any(300 <= t <= 900 for t in times)
    assert any(t > 900 for t in times)


def _hesitations(schedule: Schedule) -> int:
    """Viewers who dwelt >= 180 s on one product card and never ordered it."""
    count = 0
    for events in _by_viewer(schedule).values():
        ordered = {i.sku for e in events if isinstance(e, OrderPlaced) for i in e.items}
        sku, since, longest = None, 0, defaultdict(int)
        for e in [*events, None]:
            ends = e is None or isinstance(e, ViewerLeft) or (
                isinstance(e, ProductViewed) and e.sku != sku)
            if ends and sku is not None:
                last = events[-1].ts if e is None else e.ts
                longest[sku] = max(longest[sku], last - since)
                sku = None
            if isinstance(e, ProductViewed) and sku is None:
                sku, since = e.sku, e.ts
        count += any(ms >= 180_000 and s not in ordered for s, ms in longest.items())
    return count


def test_some_viewers_hesitate(big: tuple[Plan, Schedule]) -> None:
    assert _hesitations(big[1]) >= 50


def test_orders_and_outcomes(big: tuple[Plan, Schedule]) -> None:
    _, schedule = big
    buyers = {e.viewer_id for _, e in schedule if isinstance(e, OrderPlaced)}
    assert 0.10 <= len(buyers) / 2000 <= 0.20
    for kind in (OrderPaid, OrderPaymentFailed, OrderCancelled):
        assert any(isinstance(e, kind) for _, e in schedule)


def test_comments_carry_keywords(big: tuple[Plan, Schedule]) -> None:
    texts = [e.text for _, e in big[1] if isinstance(e, Comment)]
    hits = [t for t in texts if any(k in t for k in KEYWORDS)]
    assert 0.1 < len(hits) / len(texts) < 0.4


def test_sources_and_time_zones(big: tuple[Plan, Schedule]) -> None:
    joined = [e for _, e in big[1] if isinstance(e, ViewerJoined)]
    sources = {e.source for e in joined}
    assert sources == {"douyin", "wecom_group", "leader_share"}
    assert all(e.leader_id for e in joined if e.source == "leader_share")
    assert {e.tz for e in joined} > {"Asia/Shanghai"}
    assert 0.2 < sum(bool(e.returning) for e in joined) / len(joined) < 0.4


# --- sending ----------------------------------------------------------------------------

class _Gateway:
    """A stub gateway: records bodies, can fail the first N requests after recording them."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests = 0
        self.seen: set[str] = set()
        self.bodies: list[tuple[str, list[dict[str, Any]]]] = []
        self.skus: set[str] = set()

    async def stock(self, request: web.Request) -> web.Response:
        return web.json_response({"room_id": request.match_info["room"],
                                  "skus": [{"sku": s} for s in sorted(self.skus)]})

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        items = msgspec.json.decode(await request.read())
        self.bodies.append((request.headers["Authorization"], items))
        rejected = [{"index": i, "error": "duplicate event_id"}
                    for i, item in enumerate(items) if item["event_id"] in self.seen]
        self.seen.update(item["event_id"] for item in items)
        self.skus.update(item["sku"] for item in items if item["type"] == "stock.set")
        if self.requests <= self.fail_first:
            return web.Response(status=503)
        return web.json_response({"accepted": len(items) - len(rejected),
                                  "rejected": rejected}, status=202)


async def _serve(gateway: _Gateway) -> TestServer:
    app = web.Application()
    app.router.add_post("/v1/events", gateway.handle)
    app.router.add_get("/v1/rooms/{room}/stock", gateway.stock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


TOKENS = Tokens({"p-tok": "platform", "c-tok": "commerce", "h-tok": "host"}, "secret")


@pytest.mark.parametrize("fail_first", [0, 2])
async def test_run_sends_every_event_once_with_the_right_token(fail_first: int) -> None:
    gateway = _Gateway(fail_first)
    server = await _serve(gateway)
    plan = _plan(viewers=30, duration_s=0.6, speed=1000, seed=5)
    try:
        stats = await run(plan, gateway=str(server.make_url("")), tokens=TOKENS,
                          progress=False)
    finally:
        await server.close()
    expected = broadcast(plan)
    assert stats.events_sent == len(expected)
    # The failed requests were recorded first time round: their retries come back
    # "duplicate" and still count as accepted.
    assert (stats.accepted, stats.rejected, stats.errors) == (len(expected), 0, [])
    assert gateway.seen == {e.event_id for _, e in expected}
    assert sum(stats.by_type.values()) == len(expected)
    token = {"platform": "Bearer p-tok", "commerce": "Bearer c-tok", "host": "Bearer h-tok"}
    roles = {e.event_id: type(e).role for _, e in expected}
    for auth, items in gateway.bodies:
        assert {token[roles[i["event_id"]]] for i in items} == {auth}


async def test_run_spreads_viewers_over_gateways_each_viewer_on_one() -> None:
    """Two gateways: every event reaches exactly one; a viewer's events all reach the
    same gateway in the order of the schedule; host events go to the first."""
    gateways = [_Gateway(), _Gateway()]
    servers = [await _serve(g) for g in gateways]
    plan = _plan(viewers=60, duration_s=0.6, speed=1000, seed=5)
    try:
        stats = await run(plan, gateway=[str(s.make_url("")) for s in servers],
                          tokens=TOKENS, progress=False)
    finally:
        for server in servers:
            await server.close()
    expected = broadcast(plan)
    assert (stats.accepted, stats.rejected, stats.errors) == (len(expected), 0, [])
    got = [[i for _, items in g.bodies for i in items] for g in gateways]
    assert sorted(i["event_id"] for g in got for i in g) == sorted(e.event_id
                                                                  for _, e in expected)
    homes: dict[str, set[int]] = defaultdict(set)
    for n, items in enumerate(got):
        for item in items:
            homes[item.get("viewer_id", "")].add(n)
    assert homes.pop("") == {0}, "a host event went to the second gateway"
    assert all(len(h) == 1 for h in homes.values()), "a viewer split over gateways"
    assert {n for h in homes.values() for n in h} == {0, 1}, "one gateway got no viewer"
    roles = {e.event_id: type(e).role for _, e in expected}
    for n, items in enumerate(got):
        sent = [i["event_id"] for i in items if i.get("viewer_id")]
        mine = set(sent)
        # Per role the gateway sees its viewers' events in schedule order.
        for role in ("platform", "commerce"):
            want = [e.event_id for _, e in expected
                    if e.event_id in mine and type(e).role == role]
            assert [i for i in sent if roles[i] == role] == want, (n, role)


async def _run_through(handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       gateway: _Gateway, plan: Plan) -> SimStats:
    """`run` the plan against a stub whose POSTs go to `handle`; stock as `gateway` saw it."""
    app = web.Application()
    app.router.add_post("/v1/events", handle)
    app.router.add_get("/v1/rooms/{room}/stock", gateway.stock)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        return await run(plan, gateway=str(server.make_url("")), tokens=TOKENS,
                         progress=False)
    finally:
        await server.close()


async def test_host_events_are_answered_before_later_viewer_events_are_sent() -> None:
    """A pin, then an order after it: the order's request leaves only once the gateway
    has answered the pin (it logs host events before answering), even when the host's
    requests are slow. Sent side by side, the order could reach the worker first."""
    timings: list[tuple[str, float, float, int]] = []  # role token, arrived, answered, max ts
    gateway = _Gateway()
    loop = asyncio.get_running_loop()

    async def handle(request: web.Request) -> web.Response:
        arrived = loop.time()
        if request.headers["Authorization"] == "Bearer h-tok":
            await asyncio.sleep(0.05)  # a slow host lane: what let orders overtake pins
        response = await gateway.handle(request)
        items = gateway.bodies[-1][1]
        timings.append((request.headers["Authorization"], arrived, loop.time(),
                        max(int(i["ts"]) for i in items)))
        return response

    stats = await _run_through(handle, gateway, _plan(viewers=60, duration_s=1.5, speed=400,
                                                      seed=5))
    assert stats.rejected == 0
    hosts = [t for t in timings if t[0] == "Bearer h-tok"]
    assert len(hosts) > 3, "too few host requests to show anything"
    overtaken = [(other[3], host[3]) for host in hosts for other in timings
                 if other[0] != "Bearer h-tok" and other[3] > host[3]
                 and other[1] < host[2]]
    assert overtaken == []


async def test_a_window_returns_once_every_lane_is_answered() -> None:
    """The next window is sent only once every request of this one is answered, even
    with one lane slow: no backend's stream runs a window ahead of another's. Before,
    a window returned once its requests were queued, and with the platform's requests
    slow the commerce lane ran 52 s of show ahead at 400x."""
    answered: list[str] = []
    gateway = _Gateway()

    async def handle(request: web.Request) -> web.Response:
        token = request.headers["Authorization"]
        if token == "Bearer p-tok":
            await asyncio.sleep(0.2)  # a lane backing off, or a busy gateway
        response = await gateway.handle(request)
        answered.append(token)
        return response

    app = web.Application()
    app.router.add_post("/v1/events", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    events = [e for _, e in broadcast(_plan(viewers=20, duration_s=0.3, speed=1000, seed=5))]
    window = ([e for e in events if type(e).role == "platform"][:10]
              + [e for e in events if type(e).role == "commerce"][:5])
    try:
        async with ClientSession() as session:
            sender = _Sender(session, [str(server.make_url(""))], TOKENS, SimStats())
            await sender.send(window)
            assert sorted(set(answered)) == ["Bearer c-tok", "Bearer p-tok"]
    finally:
        await server.close()


async def test_a_backlog_goes_in_windows_of_a_few_seconds_of_show() -> None:
    """Behind schedule (a gateway stalled, as in a Redis outage), the backlog is sent in
    windows of at most MAX_WINDOW_SHOW_S of show, so one room's platform lane never runs
    more than that ahead of its commerce lane. Before, the first window after a stall took
    everything due at once: 44 s of show after a 4 s outage at 10x, and the worker fired a
    dwell nudge for a viewer whose order was still in that window's slower lane."""
    gateway = _Gateway()
    stalled: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        if request.headers["Authorization"] == "Bearer p-tok" and not stalled:
            stalled.append(0.4)
            await asyncio.sleep(0.4)  # 20 s of show at 50x fall due meanwhile
        return await gateway.handle(request)

    stats = await _run_through(handle, gateway, _plan(viewers=60, duration_s=1.0, speed=50,
                                                      seed=5))
    assert stats.rejected == 0 and stalled
    spans = [max(int(i["ts"]) for i in items) - min(int(i["ts"]) for i in items)
             for _, items in gateway.bodies]
    assert max(spans) <= MAX_WINDOW_SHOW_S * 1000, sorted(spans)[-3:]


async def test_simulate_takes_several_gateways_comma_separated() -> None:
    """`livecommerce simulate --gateway URL1,URL2`: both gateways get viewers."""
    gateways = [_Gateway(), _Gateway()]
    servers = [await _serve(g) for g in gateways]
    plan = _plan(viewers=20, duration_s=0.3, speed=1000, seed=5)
    try:
        summary = await simulate(plan, gateway_url=",".join(str(s.make_url(""))
                                                            for s in servers),
                                 tokens=TOKENS, redis=None, progress=False)
    finally:
        for server in servers:
            await server.close()
    assert summary.events_accepted == summary.events_sent == len(broadcast(plan))
    assert all(any(i.get("viewer_id") for _, items in g.bodies for i in items)
               for g in gateways), "a gateway got no viewer"


async def test_run_reports_rejections() -> None:
    async def refuse(request: web.Request) -> web.Response:
        items = msgspec.json.decode(await request.read())
        return web.json_response({"accepted": 0, "rejected": [
            {"index": i, "error": "ts: too far in the future"} for i in range(len(items))]},
            status=202)

    app = web.Application()
    app.router.add_post("/v1/events", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    plan = _plan(viewers=5, duration_s=0.3, speed=1000, seed=5)
    try:
        stats = await run(plan, gateway=str(server.make_url("")), tokens=TOKENS,
                          progress=False)
    finally:
        await server.close()
    assert stats.accepted == 0 and stats.rejected == stats.events_sent > 0
    assert 0 < len(stats.errors) <= 20 and "future" in stats.errors[0]
