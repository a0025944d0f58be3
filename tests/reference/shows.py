"""Small random shows that reach every rule aspect, and rules that make each one matter.

The simulator's show is realistic, so it rarely rejoins, never counts likes against a
rule, and ends before quiet hours or high potential mean anything. These shows do all of
that on purpose, in whole seconds so that events and due times often tie.
"""

from __future__ import annotations

import random
from pathlib import Path

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

# 2026-06-01 13:30 UTC: 21:30 in Shanghai, so the show runs into its 22:00 quiet hours,
# while Los Angeles and Sydney are quiet all along and London and New York never are.
START_MS = 1_780_320_600_000
SKUS = ("rice-5kg", "oil-1l", "noodle-8")
ZONES = ("Asia/Shanghai", "America/Los_Angeles", "America/New_York", "Europe/London",
         "Australia/Sydney", None)
COMMENTS = ("宝宝能吃吗", "有小包装吗", "多少钱", "好吃", "上链接")

# Rules where every aspect decides something: caps above 1 with a cooldown, an
# event_count rule, off-air rules with quiet hours, a cart rule no exit stops (so only
# payment cancels it), and a tight hourly cap.
RULES = {
    "nudges.toml": '''
[limits]
per_viewer_per_hour = 3

[[nudge]]
id = "likes-burst"
priority = 5
channel = "sms"
message = "谢谢点赞！"
cap_per_broadcast = 3
cooldown_s = 120
[nudge.trigger]
kind = "event_count"
event = "interaction.like"
count = 4
window_s = 60
[nudge.exit]
ordered_sku = false
[nudge.quiet_hours]
start = "23:00"
end = "07:00"

[[nudge]]
id = "dwell-2min"
priority = 10
message = "【{product_name}】¥{price}"
cap_per_broadcast = 2
cooldown_s = 300
holdout = 0.2
[nudge.trigger]
kind = "dwell"
seconds = 120

[[nudge]]
id = "cart-5min"
priority = 20
message = "还剩 {remaining} 件"
cap_per_broadcast = 2
[nudge.trigger]
kind = "cart_unpaid"
seconds = 300

[[nudge]]
id = "cart-later"
priority = 30
channel = "wecom"
message = "【{product_name}】还保留今日价"
cap_per_broadcast = 2
cooldown_s = 60
holdout = 0.1
[nudge.trigger]
kind = "cart_unpaid"
seconds = 900
[nudge.exit]
ordered_sku = false
left_room = false
broadcast_ended = false
[nudge.quiet_hours]
start = "22:00"
end = "08:00"

[[nudge]]
id = "dwell-offair"
priority = 40
channel = "app_push"
message = "还在看【{product_name}】吗"
cap_per_broadcast = 3
[nudge.trigger]
kind = "dwell"
seconds = 240
[nudge.exit]
left_room = false
broadcast_ended = false
[nudge.quiet_hours]
start = "22:00"
end = "08:00"
''',
    "tags.toml": '''
private_sources = ["wecom_group", "leader_share"]
[[watch_depth]]
value = "<5min"
below_s = 300
[[watch_depth]]
value = "5-15min"
below_s = 900
[[watch_depth]]
value = ">15min"
[high_potential]
min_watch_s = 900
min_visits = 2
[[keyword]]
id = "young-child"
tag = "household"
value = "young_child"
phrases = ["宝宝"]
[[keyword]]
id = "small"
tag = "household"
value = "small"
phrases = ["小包装"]
[[keyword]]
id = "price"
tag = "interest"
value = "price"
phrases = ["多少钱"]
''',
    "followups.toml": '''
[[followup]]
segment = "ordered"
action = "invite"
[[followup]]
segment = "cart_unpaid"
action = "coupon"
after_s = 86400
[[followup]]
segment = "watched_only"
action = "trial"
after_s = 259200
''',
}


def write_rules(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in RULES.items():
        (path / name).write_text(text)
    return path


def show(seed: int, *, viewers: int = 150, length_s: int = 2400,
         room_id: str = "ref-room") -> list[Event]:
    """Host events and `viewers` viewers doing everything a rule can see."""
    rng = random.Random(seed)
    events: list[Event] = []
    counter = iter(range(10**9))

    def add(cls: type[Event], t: int, **fields: object) -> None:
        events.append(cls(event_id=f"{room_id}-{seed}-{next(counter)}", room_id=room_id,
                          ts=START_MS + t * 1000, **fields))  # type: ignore[call-arg]

    add(BroadcastStarted, 0)
    for sku in SKUS:
        add(StockSet, 0, sku=sku, qty=1000, name=f"name-{sku}", price=rng.choice((9.9, 15.0)))
    for k, t in enumerate(range(0, length_s, 300)):
        add(SegmentStarted, t, segment=("intro", "demo", "promo", "qa")[k % 4])
        if k % 2:
            add(ProductPinned, t, sku=rng.choice(SKUS))
    add(BroadcastEnded, length_s)
    for v in range(viewers):
        _viewer(rng, add, f"v{v:04d}", length_s)
    return events


def _viewer(rng: random.Random, add: object, viewer: str, length_s: int) -> None:
    emit = add  # (cls, t, **fields)
    orders: list[str] = []
    t = rng.randint(0, length_s // 2)
    # A later join may bring another zone, even within the engine's grace of a due time.
    zone = rng.choice(ZONES)
    if rng.random() < 0.9:  # some are never seen to join
        emit(ViewerJoined, t, viewer_id=viewer,  # type: ignore[operator]
             source=rng.choice(("douyin", "wecom_group", "leader_share")),
             leader_id=rng.choice((None, "leader-a", "leader-b")),
             tz=zone, returning=rng.choice((None, True, False)))
    for _ in range(rng.randint(3, 40)):
        t += rng.choice((0, 1, 2, 5, 10, 30, 60, 120, 121, 240, 300, 600))
        if t > length_s + 2000:
            break
        r = rng.random()
        common = {"viewer_id": viewer}
        if r < 0.2:
            emit(ProductViewed, t, sku=rng.choice(SKUS), **common)  # type: ignore[operator]
        elif r < 0.32:
            for k in range(rng.randint(1, 6)):
                emit(Like, t + k * rng.choice((1, 10, 20)), **common)  # type: ignore[operator]
        elif r < 0.4:
            emit(ViewerHeartbeat, t, **common)  # type: ignore[operator]
        elif r < 0.46:
            emit(Comment, t, text=rng.choice(COMMENTS), **common)  # type: ignore[operator]
        elif r < 0.49:
            emit(rng.choice((Share, FanJoined)), t, **common)  # type: ignore[operator]
        elif r < 0.55:
            emit(CartClicked, t, sku=rng.choice(SKUS), **common)  # type: ignore[operator]
        elif r < 0.63:
            emit(CartAdded, t, sku=rng.choice(SKUS), qty=1, **common)  # type: ignore[operator]
        elif r < 0.71:
            order_id = f"o-{viewer}-{len(orders)}"
            orders.append(order_id)
            skus = rng.sample(SKUS, rng.randint(1, 2))
            emit(OrderPlaced, t, order_id=order_id,  # type: ignore[operator]
                 items=[OrderItem(s, 1, 9.9) for s in skus], **common)
        elif r < 0.83 and orders:
            cls = rng.choice((OrderPaid, OrderPaid, OrderCancelled, OrderPaymentFailed))
            extra = {"reason": "card_declined"} if cls is OrderPaymentFailed else {}
            emit(cls, t, order_id=rng.choice(orders), **extra, **common)  # type: ignore[operator]
        elif r < 0.9:
            emit(ViewerLeft, t, **common)  # type: ignore[operator]
        else:
            emit(ViewerJoined, t, viewer_id=viewer,  # type: ignore[operator]
                 source=rng.choice(("douyin", "wecom_group")), tz=rng.choice(ZONES),
                 returning=rng.choice((None, True)))
