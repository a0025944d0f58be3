"""Every Redis key, in one place.

A room's keys share the hash tag `{room}` so one Lua script can touch all of them
on Redis Cluster (a multi-line order reserves several SKUs of one room atomically).
Keys that belong to no room have no tag: each is read or written by itself, never
beside a room's keys in one script.
"""

from __future__ import annotations

from stream.core import deadletters

PREFIX = "lc"
NO_ROOM = deadletters.NO_ROOM  # the room that input naming none is counted in


def _room(room_id: str) -> str:
    return f"{PREFIX}:{{{room_id}}}"


def _book(room_id: str, book: int) -> str:
    """A broadcast's own keys, under its room's hash tag (one script still touches a room's
    stock and its broadcast's counters). Book 0, a room's first broadcast, keeps the
    room's plain names; book n is the room's (n+1)-th broadcast (see RoomTimeline)."""
    return _room(room_id) if book == 0 else f"{_room(room_id)}:b{book}"


def fences(room_id: str) -> str:
    """Hash `topic:partition[:b<book>]` -> last Kafka offset whose effects on this room (on
    that broadcast's books) are applied."""
    return f"{_room(room_id)}:fences"


def stats(room_id: str, book: int = 0) -> str:
    """Hash of the room's counters (events processed, by type, dead letters, ...)."""
    return f"{_book(room_id, book)}:stats"


def seen_event(event_id: str) -> str:
    """The gateway request that claimed an event_id, to refuse a duplicate for a while."""
    return f"{PREFIX}:eid:{event_id}"


def request(request: str) -> str:
    """A gateway request's state: `live` while it writes its events (expires if it died),
    `written` once they are in Kafka. One key, so a reader never sees it between the two."""
    return f"{PREFIX}:req:{request}"


def stock_prefix(room_id: str) -> str:
    """`+ sku` gives the hash of one SKU: available, reserved, sold, loaded, version."""
    return f"{_room(room_id)}:stock:"


def bucketed(room_id: str) -> str:
    """Hash sku -> bucket count, for the room's SKUs whose stock is split into buckets."""
    return f"{_room(room_id)}:buckets"


def _bucket(room_id: str, sku: str, bucket: int) -> str:
    # A tag of its own per bucket, so a hot SKU's buckets spread over the cluster's slots
    # ('|' cannot appear in ids, so no two buckets share a tag by accident).
    return f"{PREFIX}:{{{room_id}|{sku}|{bucket}}}"


def bucket_stock(room_id: str, sku: str, bucket: int) -> str:
    """Hash of one bucket of a SKU: available, reserved, sold, loaded, version."""
    return f"{_bucket(room_id, sku, bucket)}:stock"


def bucket_orders(room_id: str, sku: str, bucket: int) -> str:
    """Hash order_id -> what the order took from this bucket (`t:N`, `s:N`, `f:N`, `p`)."""
    return f"{_bucket(room_id, sku, bucket)}:orders"


def bucket_sets(room_id: str, sku: str, bucket: int) -> str:
    """Set of `stock.set` event ids applied to this bucket."""
    return f"{_bucket(room_id, sku, bucket)}:sets"


def skus(room_id: str) -> str:
    """Set of the room's SKUs (for snapshots)."""
    return f"{_room(room_id)}:skus"


def stock_sets(room_id: str) -> str:
    """Set of applied `stock.set` event ids: a redelivered one must not reset stock."""
    return f"{_room(room_id)}:stock-sets"


def order_prefix(room_id: str) -> str:
    """`+ order_id` gives the order's hash: status, reason, viewer, lines, deadline."""
    return f"{_room(room_id)}:order:"


def deadlines(room_id: str, partition: int) -> str:
    """Sorted set of the room's reserved orders placed on one order-topic partition, by
    the event time their reservation expires. One per partition: a partition's events
    come in its own order, so its own newest ts never passes an unread payment of its
    orders, while another partition's may (docs/decisions.md: "Expiry inside the room's
    script")."""
    return f"{_room(room_id)}:deadlines:{partition}"


def legacy_deadlines(room_id: str) -> str:
    """The room's single deadlines zset of before the per-partition ones: a show running
    across the upgrade keeps its older reservations here until the sweeper expires
    them."""
    return f"{_room(room_id)}:deadlines"


def clock(room_id: str) -> str:
    """Hash `event_ms`, `wall_ms`: the room's event-time clock and when it last moved (and
    inventory's clocks beside it, stream/store/clocks.py)."""
    return f"{_room(room_id)}:clock"


ROOMS = f"{PREFIX}:rooms"
"""Set of rooms with stock, for the reservation sweeper."""


def orders_read(deployment: str) -> str:
    """Hash of one deployment's (its topic prefix's) order-topic partitions as their owners
    last told, each second: `p` -> wall ms when p was last read to its end (every record
    the broker held applied); `ts:p` -> the newest order ts applied from p a second before.
    The sweeper moves p's clocks on by wall time only up to the first; other workers'
    viewer engines judge stock only up to the second while the first is old
    (stream/store/clocks.py, `Reading`)."""
    return f"{PREFIX}:orders-read:{deployment}"


STOCK_CHANNEL = f"{PREFIX}:stock-updates"
"""Pub/sub channel carrying coalesced stock updates from workers to gateways."""


def host_log(room_id: str) -> str:
    """List of the room's host events (encoded), each once, in arrival order."""
    return f"{_room(room_id)}:host-log"


def host_log_ids(room_id: str) -> str:
    """Set of event ids already in the host log."""
    return f"{_room(room_id)}:host-log-ids"


def stock_log(room_id: str) -> str:
    """List of the room's stock changes `[sku, ts, available, version]` (JSON), as the workers'
    coalesced feed published them: what the viewer engines judge sold-out nudges by."""
    return f"{_room(room_id)}:stock-log"


def viewer_states(deployment: str, partition: int) -> str:
    """Hash `room|viewer` -> msgpack state of the viewers of one input partition of one
    deployment (its topic prefix): a worker that takes a partition loads every viewer in
    it and fires their rooms' due ends, so two deployments on one Redis (the test suite's
    tests) must never see each other's."""
    return f"{PREFIX}:{{vs:{deployment}{partition}}}:states"


def viewer_offsets(deployment: str, partition: int) -> str:
    """Hash `topic` -> last offset whose effects are in `viewer_states(...)`."""
    return f"{PREFIX}:{{vs:{deployment}{partition}}}:offsets"


def consumed() -> str:
    """Hash `topic:partition` -> the last offset the worker pipeline fully processed."""
    return f"{PREFIX}:{{consumed}}"


def viewer_room_index(deployment: str, partition: int) -> str:
    """Hash `viewer` -> the rooms (newline-separated) where the viewer has a saved state
    in `viewer_states(...)`: how a viewer's tags are found by viewer. Beside the states
    (one slot), so the script that saves them keeps it: one write per new viewer and room,
    where a set per viewer took one command each (20,000 at a 20,000-viewer show's start,
    about 5% of the worker's main thread in `bench/viewer_engine.py`, session 21)."""
    return f"{PREFIX}:{{vs:{deployment}{partition}}}:rooms"


def viewer_rooms(viewer_id: str) -> str:
    """Set of the rooms where the viewer has tags, as workers before session 21 kept it
    (one SADD per viewer and room): read beside `viewer_room_index`, never written."""
    return f"{PREFIX}:{{v:{viewer_id}}}:rooms"


def once(room_id: str, what: str) -> str:
    """Marks an effect (a nudge, a follow-up, a suppression) as done, for exactly-once."""
    return f"{_room(room_id)}:once:{what}"


NUDGE_CHANNEL = f"{PREFIX}:nudges"
"""Pub/sub channel carrying nudges from workers to gateways (for viewers' WebSockets)."""


def held_nudges(room_id: str, viewer_id: str) -> str:
    """Hash nudge id -> `held_at_ms|nudge JSON`: nudges not yet on one of the viewer's
    screens (held so a viewer who reconnects within the hold time still gets them)."""
    return f"{_room(room_id)}:held:{viewer_id}"


def held_prefix(room_id: str) -> str:
    """`+ viewer` gives `held_nudges(room, viewer)` (for scripts that sweep the room)."""
    return f"{_room(room_id)}:held:"


def held_due(room_id: str) -> str:
    """Sorted set `viewer nudge_id` -> held_at_ms of the room's held nudges (to expire them)."""
    return f"{_room(room_id)}:held-due"


def shown_nudges(room_id: str, viewer_id: str) -> str:
    """Set of the nudge ids already sent to one of the viewer's screens: each shown once."""
    return f"{_room(room_id)}:shown:{viewer_id}"


def shown_prefix(room_id: str) -> str:
    """`+ viewer` gives `shown_nudges(room, viewer)`."""
    return f"{_room(room_id)}:shown:"


HELD_ROOMS = f"{PREFIX}:held-rooms"
"""Sorted set room -> when it last held a nudge: the rooms the gateways' expiry sweep visits."""


# --- the host's view (metrics and the post-live review) ----------------------------------

def presence(room_id: str, book: int = 0) -> str:
    """Hash viewer -> join ts while in the room, `-<leave ts>` after leaving, or
    `~<join ts>:<last event ts>` after the presence timeout passed."""
    return f"{_book(room_id, book)}:presence"


def last_seen(room_id: str, book: int = 0, partition: int = 0) -> str:
    """Sorted set viewer -> ts of the last event of the viewer's open visit (its score),
    of the viewers of one input partition, for closing visits the presence timeout has
    passed on that partition's clock."""
    return f"{_book(room_id, book)}:last-seen:{partition}"


def profiles(room_id: str, book: int = 0) -> str:
    """Hash viewer -> `source|leader|layer|region`, from the viewer's first join."""
    return f"{_book(room_id, book)}:profiles"


def watched(room_id: str, book: int = 0) -> str:
    """Hash viewer -> ms watched in closed visits."""
    return f"{_book(room_id, book)}:watched"


def buyers(room_id: str, book: int = 0) -> str:
    """Hash viewer -> event time of the viewer's first confirmed payment."""
    return f"{_book(room_id, book)}:buyers"


def spend(room_id: str, book: int = 0) -> str:
    """Hash viewer -> GMV of the viewer's confirmed orders."""
    return f"{_book(room_id, book)}:spend"


def carted(room_id: str, book: int = 0) -> str:
    """Set of viewers who added to cart or placed an order."""
    return f"{_book(room_id, book)}:carted"


def pay_failed(room_id: str, book: int = 0) -> str:
    """Set of viewers with a failed payment."""
    return f"{_book(room_id, book)}:pay-failed"


def seconds(room_id: str, book: int = 0) -> str:
    """Hash `<epoch second>:<name>` of cart clicks, orders, paid and GMV per event-time
    second; summed per show segment when read, so a late segment start still counts."""
    return f"{_book(room_id, book)}:seconds"


def acked(room_id: str) -> str:
    """Hash worker -> the last claim round of it whose effects Kafka has acked (the
    once-marks it wrote up to that round count as delivered)."""
    return f"{_room(room_id)}:acked"


def book_orders(room_id: str, book: int = 0) -> str:
    """Set of the ids of the orders placed on the broadcast's books (accepted or not),
    for its pick lists; each order's hash is under `order_prefix`."""
    return f"{_book(room_id, book)}:orders"


def followups(room_id: str, book: int = 0) -> str:
    """Hash `viewer|due_at` -> the follow-up (JSON) decided at the broadcast's end, kept
    when its claim is new (once per follow-up), for the SCRM export."""
    return f"{_book(room_id, book)}:followups"


def nudged(room_id: str, book: int = 0) -> str:
    """Hash `rule|viewer` -> `variant|ts` of the viewer's first nudge by that rule."""
    return f"{_book(room_id, book)}:nudged"


METRIC_ROOMS = f"{PREFIX}:metric-rooms"
"""Sorted set room -> last event time: the rooms Prometheus exports (recent ones)."""
