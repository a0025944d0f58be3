"""`livecommerce demo`: the system plus a simulated broadcast, and a summary at the end."""

from __future__ import annotations

import time

import msgspec

from stream.core.config import Settings
from stream.local import sender, showplan
from stream.local.runner import running, wait_drained
from stream.store.inventory import Inventory


class Summary(msgspec.Struct, kw_only=True):
    room_id: str
    viewers: int
    events_sent: int
    events_accepted: int
    events_processed: int
    dead_letters: int
    orders: int
    paid: int
    gmv: float
    oversold: int
    nudges: int
    tags: int
    seconds: float


async def run_demo(settings: Settings, *, viewers: int, duration_s: float, speed: float,
                   seed: int, http_port: int | None, progress: bool,
                   room_id: str = "demo-room", announce: bool = True,
                   redis_cluster: int = 0, redis_replicas: int = 0) -> Summary:
    started = time.monotonic()
    async with running(settings, http_port=http_port, redis_cluster=redis_cluster,
                       redis_replicas=redis_replicas) as run:
        if announce:
            print(f"gateway {run.gateway_url}  (viewers={viewers}, "
                  f"{duration_s:g}s at {speed:g}x = {duration_s * speed / 60:.1f} min of show)",
                  flush=True)
        plan = showplan.plan_for(room_id=room_id, viewers=viewers, duration_s=duration_s,
                                  speed=speed, seed=seed)
        sent = await sender.run(plan, gateway=run.gateway_url, tokens=run.tokens,
                                   progress=progress)
        stats = await wait_drained(run.redis, room_id, expected=sent.events_sent)
        audit = await Inventory(run.redis).audit(room_id)
    return Summary(
        room_id=room_id,
        viewers=viewers,
        events_sent=sent.events_sent,
        events_accepted=sent.accepted,
        events_processed=stats.get("events", 0),
        dead_letters=stats.get("dead_letters", 0),
        orders=stats.get("ev:order.placed", 0),
        paid=stats.get("orders_paid", 0),
        gmv=round(stats.get("gmv", 0.0), 2),
        oversold=audit.oversold + len(audit.problems),
        nudges=stats.get("nudges", 0),
        tags=stats.get("tags", 0),
        seconds=round(time.monotonic() - started, 1),
    )
