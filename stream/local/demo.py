"""`livecommerce demo` and `simulate`: a simulated broadcast, and one summary of it.

Both commands print the same summary (`Summary`, README "Two commands" lists its keys):
what the simulator sent and the gateway took, and, when the system's Redis is known,
what the workers processed, sold and decided.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec

from stream.core.auth import Tokens
from stream.core.config import Settings
from stream.local import sender, showplan
from stream.local.runner import Running, room_totals, running, wait_drained
from stream.store.connect import Client
from stream.store.inventory import Inventory


class Summary(msgspec.Struct, kw_only=True):
    """One show's outcome. The Redis-side fields are None when Redis is not known."""

    room_id: str
    viewers: int
    events_sent: int
    events_accepted: int
    events_rejected: int
    retries: int
    events_processed: int | None
    dead_letters: int | None
    orders: int | None
    paid: int | None
    gmv: float | None
    oversold: int | None
    nudges: int | None
    tags: int | None
    seconds: float
    errors: list[str] = []

    @property
    def lost(self) -> int:
        """Events sent but neither processed nor dead-lettered (0 when unknown)."""
        if self.events_processed is None or self.dead_letters is None:
            return 0
        return self.events_sent - self.dead_letters - self.events_processed


async def simulate(plan: showplan.Plan, *, gateway_url: str, tokens: Tokens,
                   redis: Client | None, progress: bool) -> Summary:
    """Send `plan` to a running gateway (or to several of one deployment, their URLs
    comma-separated: the viewers are spread over them); with `redis`, wait for the
    workers and count.

    Counters are per room and add up over shows, so the summary is the difference
    between the room's counters before and after this show."""
    started = time.monotonic()
    before = await room_totals(redis, plan.room_id) if redis is not None else {}
    urls = [u.strip() for u in gateway_url.split(",") if u.strip()]
    sent = await sender.run(plan, gateway=urls, tokens=tokens, progress=progress)
    if redis is None:
        return _summary(plan, sent, None, None, started)
    expected = sent.events_sent + before.get("events", 0) + before.get("dead_letters", 0)
    after = await wait_drained(redis, plan.room_id, expected=int(expected))
    stats = {k: v - before.get(k, 0) for k, v in after.items()}
    audit = await Inventory(redis).audit(plan.room_id)
    return _summary(plan, sent, stats, audit.oversold + len(audit.problems), started)


def _summary(plan: showplan.Plan, sent: sender.SimStats, stats: dict[str, int | float] | None,
             oversold: int | None, started: float) -> Summary:
    def get(name: str) -> int | None:
        return None if stats is None else int(stats.get(name, 0))

    return Summary(
        room_id=plan.room_id,
        viewers=plan.viewers,
        events_sent=sent.events_sent,
        events_accepted=sent.accepted,
        events_rejected=sent.rejected,
        retries=sent.retries,
        events_processed=get("events"),
        dead_letters=get("dead_letters"),
        orders=get("ev:order.placed"),
        paid=get("orders_paid"),
        gmv=None if stats is None else round(stats.get("gmv", 0.0), 2),
        oversold=oversold,
        nudges=get("nudges"),
        tags=get("tags"),
        seconds=round(time.monotonic() - started, 1),
        errors=sent.errors,
    )


async def run_demo(settings: Settings, *, viewers: int, duration_s: float, speed: float,
                   seed: int, http_port: int | None, progress: bool,
                   room_id: str = "demo-room",
                   announce: Callable[[Running], None] | None = None,
                   after: Callable[[Running, Summary], Awaitable[None]] | None = None,
                   redis_cluster: int = 0, redis_replicas: int = 0) -> Summary:
    """The system, a show through it, the summary; `after` runs while the system is still
    up (`demo --keep` waits there for Ctrl-C)."""
    async with running(settings, http_port=http_port, redis_cluster=redis_cluster,
                       redis_replicas=redis_replicas) as run:
        if announce is not None:
            announce(run)
        plan = showplan.plan_for(room_id=room_id, viewers=viewers, duration_s=duration_s,
                                 speed=speed, seed=seed)
        summary = await simulate(plan, gateway_url=run.gateway_url, tokens=run.tokens,
                                 redis=run.redis, progress=progress)
        if after is not None:
            await after(run, summary)
    return summary
