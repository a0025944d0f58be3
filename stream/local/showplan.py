"""The show plan: a realistic live-commerce broadcast, planned event by event.

`broadcast(plan)` is pure: from a seed it plans every event of the show (host segments,
viewers arriving and leaving, likes, comments, product dwell, carts, orders and their
outcomes) with the wall-clock offset at which to send it. `stream.local.sender.run`
sends that schedule to a gateway over HTTP.

Time: the show lasts `duration_s * speed` simulated seconds and is sent in `duration_s`
wall seconds. Event `ts` is `start_ms + sim_ms`; `plan_for` puts `start_ms` that far in
the past so every `ts` is already past when sent (the gateway refuses future stamps)
while the gaps between events stay true to the simulated show.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import msgspec

from stream.core.models import (
    BroadcastEnded,
    BroadcastStarted,
    CartAdded,
    CartClicked,
    Comment,
    Event,
    FanJoined,
    Like,
    OrderCancelled,
    OrderItem,
    OrderPaid,
    OrderPaymentFailed,
    OrderPlaced,
    ProductPinned,
    ProductViewed,
    SegmentStarted,
    Share,
    StockSet,
    ViewerHeartbeat,
    ViewerJoined,
    ViewerLeft,
)

# --- the plan ---------------------------------------------------------------------------


class Product(msgspec.Struct, frozen=True):
    """One SKU on the show's shopping bag, with the stock loaded at the start."""

    sku: str
    name: str
    price: float
    stock: int


# The first product is the flash-sale item of the first promo (seed 000's 3-minute popup).
DEFAULT_PRODUCTS: list[Product] = [
    Product("germ-rice-5kg", "有机胚芽米 5kg", 59.9, 500),
    Product("peanut-oil-5l", "古法压榨花生油 5L", 89.9, 300),
    Product("millet-2kg", "沁州黄小米 2kg", 29.9, 400),
    Product("germ-rice-1kg", "有机胚芽米 1kg 小包装", 15.9, 800),
    Product("rapeseed-oil-5l", "非转基因菜籽油 5L", 69.9, 200),
]


class Plan(msgspec.Struct, kw_only=True):
    """Everything `broadcast` needs; the same plan always yields the same show."""

    room_id: str
    viewers: int
    duration_s: float
    speed: float
    seed: int
    start_ms: int
    products: list[Product]
    # Viewer ids are the room's own unless an audience is named: shows of one audience
    # (a store's regulars, hopping between its rooms) share the same viewer ids.
    audience: str = ""

    def __post_init__(self) -> None:
        if self.viewers < 0:
            raise ValueError("viewers: must be >= 0")
        if self.duration_s <= 0 or self.speed <= 0:
            raise ValueError("duration_s and speed: must be > 0")
        if not self.products:
            raise ValueError("products: at least one product is needed")
        skus = [p.sku for p in self.products]
        if len(set(skus)) != len(skus):
            raise ValueError("products: duplicate sku")

    @property
    def sim_s(self) -> float:
        """Length of the simulated show in seconds."""
        return self.duration_s * self.speed


def plan_for(*, room_id: str = "demo-room", viewers: int = 200, duration_s: float = 30,
             speed: float = 20, seed: int = 1, now_ms: int | None = None,
             products: list[Product] | None = None, audience: str = "") -> Plan:
    """A plan whose show ends at `now_ms`, so every event ts is in the past when sent."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return Plan(room_id=room_id, viewers=viewers, duration_s=duration_s, speed=speed,
                seed=seed, start_ms=now - round(duration_s * speed * 1000),
                products=list(DEFAULT_PRODUCTS if products is None else products),
                audience=audience)


# --- flavour ----------------------------------------------------------------------------

_SOURCES = (("douyin", 60), ("wecom_group", 25), ("leader_share", 15))
# 团长 (group leaders) are local: a shared link brings viewers from the leader's city.
_LEADERS = (("leader-wang", "杭州"), ("leader-li", "成都"), ("leader-zhang", "武汉"),
            ("leader-chen", "广州"), ("leader-zhao", "西安"))
_REGIONS = ("北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "长沙",
            "郑州", "哈尔滨")
_OTHER_TZ = ("America/Los_Angeles", "America/New_York", "Europe/London", "Australia/Sydney",
             "Asia/Singapore")
_COMMENTS = ("主播好！", "已下单", "米看着好香", "发什么快递？", "什么时候发货", "支持支持",
             "上链接", "讲讲花生油", "煮粥好喝吗", "老客户了，回购", "保质期多久？", "包邮吗",
             "买过，真的好吃", "家里老人爱吃", "抢到了！", "还有货吗")
# Phrases the tag rules look for (seed 001): young child, small household, usage, price.
_KEYWORD_COMMENTS = ("这个米宝宝能吃吗？", "宝宝能吃吗", "有没有小包装？一个人吃不完",
                     "小包装有吗", "胚芽米怎么吃？", "怎么吃比较好", "5kg多少钱",
                     "现在多少钱？")
_FAIL_REASONS = ("insufficient_balance", "card_declined", "payment_timeout")

_SEGMENTS = (("intro", 90.0), ("demo", 240.0), ("promo", 150.0), ("qa", 120.0))


@dataclass(frozen=True, slots=True)
class _Segment:
    kind: str
    start: float
    end: float
    product: Product


def _segments(plan: Plan) -> list[_Segment]:
    """intro → demo → promo → qa, cycling products; squeezed so one cycle fits a short show."""
    length = plan.sim_s
    scale = min(1.0, length / sum(d for _, d in _SEGMENTS))
    out: list[_Segment] = []
    t, n = 0.0, 0
    while length - t > 1e-6:
        kind, base = _SEGMENTS[n % len(_SEGMENTS)]
        product = plan.products[(n // len(_SEGMENTS)) % len(plan.products)]
        end = min(length, t + base * scale)
        out.append(_Segment(kind, t, end, product))
        t, n = end, n + 1
    return out


def _label(segment: _Segment) -> str:
    p = segment.product
    return {"intro": "开场：今日福利预告", "demo": f"产品讲解：{p.name}",
            "promo": f"限时秒杀：{p.name} {p.price:g}元，前50名送量杯",
            "qa": "答疑互动：怎么吃、怎么存"}.get(segment.kind, segment.kind)


def _prefix(plan: Plan) -> str:
    """Short tag for ids: runs with another seed (or room) never reuse an id."""
    return hashlib.blake2b(f"{plan.seed}:{plan.room_id}".encode(), digest_size=3).hexdigest()


def _times(rng: random.Random, lo: float, hi: float, mean_gap: float) -> list[float]:
    """A Poisson process on (lo, hi)."""
    out: list[float] = []
    t = lo + rng.expovariate(1 / mean_gap)
    while t < hi:
        out.append(t)
        t += rng.expovariate(1 / mean_gap)
    return out


# --- the show ---------------------------------------------------------------------------

_Draft = tuple[float, int, type[Event], dict[str, Any]]


class _Show:
    """Collects drafts (sim time, tiebreak, class, fields), then stamps ids in send order."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.length = plan.sim_s
        # Keep viewer activity strictly inside the show, clear of start and end.
        self.edge = min(1.0, self.length * 0.01)
        self.prefix = _prefix(plan)
        self.audience = plan.audience or self.prefix
        self.segments = _segments(plan)
        demos = [s for s in self.segments if s.kind == "demo"]
        self._pin_at = [s.start for s in demos]
        self._pin_sku = [s.product.sku for s in demos]
        self.promos = [s for s in self.segments if s.kind == "promo"]
        self._drafts: list[_Draft] = []
        self._orders = 0

    def add(self, t: float, cls: type[Event], **fields: Any) -> None:
        # The counter breaks ties so events at one instant keep the order they were made in.
        self._drafts.append((t, len(self._drafts), cls, fields))

    def pinned(self, t: float) -> str | None:
        i = bisect_right(self._pin_at, t)
        return self._pin_sku[i - 1] if i else None

    def on_screen(self, t: float) -> str:
        """The product a viewer opens at `t`: the pinned one, or any before the first pin."""
        return self.pinned(t) or self.rng.choice(self.plan.products).sku

    def product(self, sku: str) -> Product:
        return next(p for p in self.plan.products if p.sku == sku)

    def order_id(self) -> str:
        self._orders += 1
        return f"o-{self.prefix}-{self._orders:06d}"

    def host(self) -> None:
        self.add(0.0, BroadcastStarted)
        for p in self.plan.products:
            self.add(0.0, StockSet, sku=p.sku, qty=p.stock, name=p.name, price=p.price)
        for s in self.segments:
            sku = s.product.sku if s.kind in ("demo", "promo") else None
            self.add(s.start, SegmentStarted, segment=s.kind, label=_label(s), sku=sku)
            if s.kind == "demo":
                self.add(s.start, ProductPinned, sku=s.product.sku)
        self.add(self.length, BroadcastEnded)

    def events(self) -> list[tuple[float, Event]]:
        plan = self.plan
        out: list[tuple[float, Event]] = []
        for seq, (t, _, cls, fields) in enumerate(sorted(self._drafts, key=lambda d: d[:2])):
            event = cls(event_id=f"{plan.room_id}-{self.prefix}-{seq}", room_id=plan.room_id,
                        ts=plan.start_ms + round(t * 1000), **fields)
            out.append((min(t / plan.speed, plan.duration_s), event))
        return out


class _Viewer:
    """One viewer's visit: join, watch (heartbeats, browsing, interactions), maybe buy, leave."""

    def __init__(self, show: _Show, index: int) -> None:
        self.show = show
        self.rng = show.rng
        self.id = f"v-{show.audience}-{index:06d}"
        self.arrive = self._arrival()
        watch = max(20.0, self.rng.lognormvariate(math.log(200), 1.0))
        self.stays = self.arrive + watch >= show.length - show.edge
        self.leave = show.length - show.edge if self.stays else self.arrive + watch

    def _arrival(self) -> float:
        show, rng = self.show, self.rng
        if show.promos and rng.random() < 0.15:
            s = rng.choice(show.promos)
            t = s.start + min(rng.expovariate(1 / 30), 0.9 * (s.end - s.start))
        else:
            t = show.length * rng.betavariate(1.0, 3.0)  # front-loaded
        return min(max(t, show.edge), show.length - 3 * show.edge)

    def add(self, t: float, cls: type[Event], **fields: Any) -> None:
        self.show.add(t, cls, viewer_id=self.id, **fields)

    def simulate(self) -> None:
        self._join()
        span = self.leave - self.arrive
        avoid: tuple[float, float] | None = None
        if span >= 90 and self.rng.random() < 0.2:
            self._buy()
        elif span >= 260 and self.rng.random() < 0.3:
            avoid = self._hesitate()
        elif span >= 30 and self.rng.random() < 0.2:
            self._cart_only()
        self._heartbeats()
        self._browse(avoid)
        self._interact()
        if not self.stays:
            self.add(self.leave, ViewerLeft)

    def _join(self) -> None:
        rng = self.rng
        source = rng.choices([s for s, _ in _SOURCES], [w for _, w in _SOURCES])[0]
        leader, region = rng.choice(_LEADERS) if source == "leader_share" else (None, None)
        if region is None and rng.random() < 0.8:
            region = rng.choice(_REGIONS)
        tz = "Asia/Shanghai" if rng.random() < 0.93 else rng.choice(_OTHER_TZ)
        self.add(self.arrive, ViewerJoined, source=source, leader_id=leader, region=region,
                 tz=tz, returning=rng.random() < 0.3)

    def _heartbeats(self) -> None:
        t = self.arrive + 30
        while t < self.leave:
            self.add(t, ViewerHeartbeat)
            t += 30

    def _browse(self, avoid: tuple[float, float] | None) -> None:
        """Open product cards now and then, never breaking a hesitation dwell."""
        for t in _times(self.rng, self.arrive, self.leave, 110):
            if avoid is None or not avoid[0] <= t <= avoid[1]:
                self.add(t, ProductViewed, sku=self.show.on_screen(t))

    def _interact(self) -> None:
        rng, lo, hi = self.rng, self.arrive, self.leave
        if rng.random() < 0.6:
            for t in _times(rng, lo, hi, 60):
                self.add(t, Like, count=rng.randint(1, 20))
        if rng.random() < 0.4:
            for t in _times(rng, lo, hi, 150):
                self.add(t, Comment, text=self._comment())
        if rng.random() < 0.08:
            self.add(rng.uniform(lo, hi), Share)
        if rng.random() < 0.1:
            self.add(rng.uniform(lo, hi), FanJoined)

    def _comment(self) -> str:
        pool = _KEYWORD_COMMENTS if self.rng.random() < 0.2 else _COMMENTS
        return self.rng.choice(pool)

    def _hesitate(self) -> tuple[float, float]:
        """Dwell >= 3 min on one product card without ordering: what the nudge targets."""
        rng = self.rng
        start = self.arrive + rng.uniform(5, 40)
        end = start + rng.uniform(185, min(420, self.leave - start - 2))
        sku = self.show.on_screen(start)
        self.add(start, ProductViewed, sku=sku)
        if rng.random() < 0.4:
            self.add(start + rng.uniform(60, 150), ProductViewed, sku=sku)
        if rng.random() < 0.5:
            self.add(rng.uniform(start, end), Comment, text=rng.choice(_KEYWORD_COMMENTS))
        return start, end

    def _cart_only(self) -> None:
        """Clicked the bag, maybe added to cart, never ordered: the drop-off case."""
        t = self.rng.uniform(self.arrive + 10, self.leave - 10)
        sku = self.show.on_screen(t)
        self.add(t, CartClicked, sku=sku)
        if self.rng.random() < 0.5:
            self.add(t + self.rng.uniform(2, 8), CartAdded, sku=sku, qty=self.rng.randint(1, 2))

    def _buy(self) -> None:
        rng, show = self.rng, self.show
        outcome, delay = self._outcome()
        lo = self.arrive + 60
        delay = min(delay, (self.leave - 1 - lo) / 2)  # the outcome lands before leaving
        at = self._order_time(lo, self.leave - 1 - delay)
        sku = show.pinned(at) or show.plan.products[0].sku
        skus = [sku]
        others = [p.sku for p in show.plan.products if p.sku != sku]
        if others and rng.random() < 0.3:
            skus.append(rng.choice(others))
        self.add(at - rng.uniform(15, 50), ProductViewed, sku=sku)
        self.add(at - rng.uniform(6, 12), CartClicked, sku=sku)
        items = [OrderItem(s, rng.randint(1, 2), show.product(s).price) for s in skus]
        for item in items:
            self.add(at - rng.uniform(1, 5), CartAdded, sku=item.sku, qty=item.qty)
        order_id = show.order_id()
        self.add(at, OrderPlaced, order_id=order_id, items=items)
        if outcome is not None:
            self.add(at + delay, outcome[0], order_id=order_id, **outcome[1])
        if rng.random() < 0.2:
            self.add(rng.uniform(at, self.leave), Share)

    def _outcome(self) -> tuple[tuple[type[Event], dict[str, Any]] | None, float]:
        """Paid 80%, payment failed 8%, cancelled 5%, left unpaid 7%; with a delay."""
        r, rng = self.rng.random(), self.rng
        if r < 0.80:
            return (OrderPaid, {}), rng.uniform(5, 45)
        if r < 0.88:
            return (OrderPaymentFailed, {"reason": rng.choice(_FAIL_REASONS)}), rng.uniform(10, 30)
        if r < 0.93:
            return (OrderCancelled, {}), rng.uniform(20, 120)
        return None, rng.uniform(5, 45)

    def _order_time(self, lo: float, hi: float) -> float:
        """Most orders land in a flash sale the viewer is watching."""
        windows = [(max(lo, s.start), min(hi, s.end)) for s in self.show.promos]
        windows = [w for w in windows if w[1] > w[0]]
        if windows and self.rng.random() < 0.6:
            lo, hi = self.rng.choice(windows)
        return self.rng.uniform(lo, hi)


def broadcast(plan: Plan) -> list[tuple[float, Event]]:
    """Every event of the show as (wall offset in seconds, event), sorted by offset."""
    show = _Show(plan)
    show.host()
    for i in range(plan.viewers):
        _Viewer(show, i).simulate()
    return show.events()
