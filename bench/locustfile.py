"""Load a running livecommerce gateway the way a live room does.

    livecommerce up                       # prints the gateway URL and the tokens file
    LIVECOMMERCE_TOKENS_FILE=/tmp/livecommerce-…/tokens.json \\
        locust -f bench/locustfile.py --headless -u 500 -r 50 -t 60s --host http://127.0.0.1:PORT

Three kinds of users share one room (`LOCUST_ROOM`, default `locust-room`):
- `Viewer` (platform token): joins, sends heartbeats, views products, likes, comments,
  clicks and adds to cart, sometimes leaves and comes back; leaves when stopped.
- `Buyer` (commerce token): places an order and pays it.
- `StockWatcher` (no token): holds the room's SSE stream for a while, as a screen does.

At the start the host token loads ample stock, so orders are reserved, not refused.
A request fails unless the gateway answers 202 with every event accepted (or, for SSE,
opens the stream with a `snapshot`). The file depends only on locust, not on this
package, so it can be pointed at any deployment.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
import uuid
from typing import Any

import gevent
from locust import FastHttpUser, HttpUser, between, events, task
from locust.env import Environment

ROOM = os.environ.get("LOCUST_ROOM", "locust-room")
SKUS = ["germ-rice-5kg", "camellia-oil-1l", "wuchang-rice-10kg", "black-tea-250g",
        "walnut-500g", "honey-1kg"]
STOCK_EACH = 1_000_000
COMMENTS = ["还有货吗", "多少钱", "好吃吗", "已下单", "主播好", "这个米怎么样", "再来一单"]
# How long a stock watcher keeps its stream open before reconnecting.
WATCH_S = (5.0, 15.0)

# Live stock updates the watchers received (not request rows: they would swamp the
# aggregate percentiles); printed at the end. Latency is bench/inventory.py's job.
STOCK_EVENTS = [0]

_run = uuid.uuid4().hex[:8]  # event ids stay unique across runs against one gateway
_seq = itertools.count()


def _tokens() -> dict[str, str]:
    """One token per role from `LIVECOMMERCE_TOKENS_FILE` (written and printed by `up`)."""
    path = os.environ.get("LIVECOMMERCE_TOKENS_FILE")
    if not path:
        raise SystemExit("set LIVECOMMERCE_TOKENS_FILE (printed by `livecommerce up`)")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    by_role: dict[str, str] = {}
    for token, role in spec["tokens"].items():
        by_role.setdefault(role, token)
    return by_role


TOKENS = _tokens()


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "event_id": f"lc-{_run}-{next(_seq)}", "room_id": ROOM,
            "ts": int(time.time() * 1000), **fields}


def _headers(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}", "Content-Type": "application/json"}


@events.test_start.add_listener
def load_stock(environment: Environment, **_: Any) -> None:
    """The host loads the stock once, before users start (as an operator would)."""
    import urllib.request

    body = json.dumps([event("stock.set", sku=sku, qty=STOCK_EACH, price=59.9)
                       for sku in SKUS]).encode()
    request = urllib.request.Request(f"{environment.host}/v1/events", data=body,
                                     headers=_headers("host"), method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer = json.loads(resp.read())
    if resp.status != 202 or answer["rejected"]:
        raise RuntimeError(f"loading stock failed: {resp.status} {answer}")


@events.test_stop.add_listener
def report_stock_events(environment: Environment, **_: Any) -> None:
    print(f"stock events received over SSE by the watchers: {STOCK_EVENTS[0]}",
          file=sys.stderr, flush=True)


class _Poster(FastHttpUser):
    abstract = True
    role = "platform"

    def post(self, name: str, *batch: dict[str, Any]) -> None:
        """POST events; anything but 202 with all of them accepted is a failure."""
        with self.client.post("/v1/events", data=json.dumps(batch), headers=_headers(self.role),
                              name=name, catch_response=True) as resp:
            if resp.status_code != 202:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            answer = resp.json()
            if answer["accepted"] != len(batch) or answer["rejected"]:
                resp.failure(f"refused: {answer['rejected'][:3]}")


class Viewer(_Poster):
    """A viewer in the room (the platform backend posts on their behalf)."""

    weight = 16
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.viewer_id = f"lv-{_run}-{uuid.uuid4().hex[:10]}"
        self.join()

    def on_stop(self) -> None:
        self.post("viewer.left", self.ev("viewer.left"))

    def ev(self, type_: str, **fields: Any) -> dict[str, Any]:
        return event(type_, viewer_id=self.viewer_id, **fields)

    def join(self) -> None:
        self.post("viewer.joined", self.ev("viewer.joined", source=random.choice(
            ["douyin", "kuaishou", "wechat"]), region="Zhejiang", tz="Asia/Shanghai"))

    @task(6)
    def heartbeat(self) -> None:
        self.post("viewer.heartbeat", self.ev("viewer.heartbeat"))

    @task(4)
    def view_product(self) -> None:
        self.post("product.viewed", self.ev("product.viewed", sku=random.choice(SKUS)))

    @task(3)
    def like(self) -> None:
        self.post("interaction.like", self.ev("interaction.like", count=random.randint(1, 5)))

    @task(1)
    def comment(self) -> None:
        self.post("interaction.comment", self.ev("interaction.comment",
                                                 text=random.choice(COMMENTS)))

    @task(1)
    def cart(self) -> None:
        sku = random.choice(SKUS)
        self.post("cart.clicked+added", self.ev("cart.clicked", sku=sku),
                  self.ev("cart.added", sku=sku, qty=1))

    @task(1)
    def leave_and_return(self) -> None:
        self.post("viewer.left", self.ev("viewer.left"))
        self.join()


class Buyer(_Poster):
    """The commerce backend: an order placed, then paid a moment later."""

    weight = 2
    role = "commerce"
    wait_time = between(2.0, 5.0)

    def on_start(self) -> None:
        self.viewer_id = f"lb-{_run}-{uuid.uuid4().hex[:10]}"

    @task
    def buy(self) -> None:
        order_id = f"lo-{_run}-{next(_seq)}"
        items = [{"sku": sku, "qty": random.randint(1, 3), "price": 59.9}
                 for sku in random.sample(SKUS, random.randint(1, 2))]
        self.post("order.placed", event("order.placed", viewer_id=self.viewer_id,
                                        order_id=order_id, items=items))
        time.sleep(random.uniform(0.2, 1.0))  # gevent-patched: yields to other users
        self.post("order.paid", event("order.paid", viewer_id=self.viewer_id,
                                      order_id=order_id))


class StockWatcher(HttpUser):
    """A screen following the room's live stock over SSE, reconnecting now and then."""

    weight = 2
    wait_time = between(0.5, 2.0)

    @task
    def watch(self) -> None:
        with self.client.get(f"/v1/rooms/{ROOM}/stock/stream", stream=True, timeout=30,
                             name="stock/stream (snapshot)", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            lines = resp.iter_lines(decode_unicode=True)
            if next(lines, None) != "event: snapshot":
                resp.failure("the stream did not open with a snapshot")
                return
            resp.success()
            # A quiet room sends only a keepalive every 15 s: bound the hold by time.
            with gevent.Timeout(random.uniform(*WATCH_S), False):
                kind = "snapshot"
                for line in lines:
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind == "stock":
                        STOCK_EVENTS[0] += 1
