"""The stream worker: a faust app whose agents feed batches to the Pipeline.

Several `livecommerce worker` processes join one consumer group and share the
partitions. Guarantee is at-least-once (tansu has no transactions); every effect
downstream is idempotent by event, order or Kafka offset.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faust
from faust.types import TP, EventT

from stream.core import counters
from stream.core.batch import Record
from stream.core.codec import encode
from stream.core.config import Settings
from stream.core.models import StockUpdate
from stream.core.topics import Topics
from stream.engine import ENGINE
from stream.store import keys
from stream.store.channels import queue_publish
from stream.store.connect import RedisUnusable, detect, make
from stream.store.inventory import Inventory
from stream.store.ledger import Ledger
from stream.store.presence import Presence
from stream.store.roomlog import RoomLog
from stream.store.stocklog import StockLogWriter
from stream.worker import gaps
from stream.worker.admin import ensure_topics
from stream.worker.engagement import Engagement
from stream.worker.orders import Orders
from stream.worker.pipeline import Pipeline
from stream.worker.progress import Progress
from stream.worker.resume import start_of
from stream.worker.rulewatch import RuleWatcher
from stream.worker.status import EVERY_S as STATUS_EVERY_S
from stream.worker.status import Status, attach_handler, joining
from stream.worker.status import log as status_log
from stream.worker.statusfile import StatusFile
from stream.worker.stockfeed import StockFeed
from stream.worker.transport import App

log = logging.getLogger(__name__)

# A take() batch: big enough to amortise one Redis round trip, short enough for live stock.
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.01
# A take() of envelopes can hold 200k events after a stall. Handled in pieces of ~1k
# events, the next piece is decoded and judged while Redis still works on the last
# one's effects (delivery runs behind the engine) instead of all waiting on one another.
CHUNK_BYTES = 128 * 1024
# A take's order records go to the inventory in one call, which applies them in event
# time across partitions (orders.py, `_merged`). In pieces of CHUNK_BYTES a backlog's
# partitions were applied one after another, so which buyer got the last units, and
# whether a dwell saw its product sold out, hung on the partition read first:
# bench/viewer_engine.py (8 partitions) sent 2,018-3,506 nudges where the log in event
# time sends 1,313; in one call, 1,157-1,376 in 15 of 18 runs (README, "Stock at fire
# time": orders split over takes still differ). Bounded (~20k orders a call).
ORDER_PIECE_BYTES = 4 * 1024 * 1024
SWEEP_EVERY_S = 1.0
TICK_EVERY_S = 1.0
APP_ID = "livecommerce"


def broker_url(settings: Settings) -> str:
    url = settings.kafka_url
    return url if "://" in url else f"kafka://{url}"


def group_id(topic_prefix: str) -> str:
    """One consumer group per topic prefix: two deployments (or tests) never share one."""
    return APP_ID if topic_prefix == "lc." else f"{APP_ID}-{topic_prefix.strip('.')}"


def create_app(settings: Settings, *, cluster: bool = False) -> faust.App:
    """The faust app; `cluster` says what `connect.detect` found at `settings.redis_url`."""
    app = App(
        group_id(settings.topic_prefix),
        broker=broker_url(settings),
        store="memory://",
        # The memory store writes nothing to disk, yet faust makes `{id}-data/v1/tables`
        # at start, in the working directory by default: 25 of them in the repo after
        # one `make test` (one per test's topic prefix). The temp dir keeps them out.
        datadir=Path(tempfile.gettempdir()) / "{conf.name}-data",
        # A group join waits half the session timeout, and a killed worker's partitions
        # wait the whole of it: 6 s means ~3 s to start (not ~31 s) and a takeover in
        # ~10 s. Heartbeats run on faust's consumer thread, so a busy batch cannot miss one.
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        producer_max_batch_size=1 << 20,
        producer_max_request_size=4 << 20,
        # tansu has no transactions: at-least-once, and idempotent effects instead.
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
    )
    topics = Topics(settings.topic_prefix)
    redis = make(settings.redis_url, cluster=cluster)

    async def send(topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> object:
        # Straight to the producer: faust's Topic.send costs ~4x more per record, and
        # a commit flushes the producer first, so at-least-once still holds.
        return await app.producer.send(topic, key, value, partition, None, None)

    async def send_many(topic: str, partition: int,
                        records: Sequence[tuple[bytes | None, bytes]]) -> Awaitable[object]:
        # aiokafka's batch builder: ~1 us a record against ~8 us through send() and its
        # sender loop. faust has no batch API, so its own producer is taken (its commit
        # still flushes it).
        producer = app.producer._ensure_producer()  # type: ignore[attr-defined]
        ack: Awaitable[object] | None = None  # aiokafka's future; `records` is never empty
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                ack = await producer.send_batch(batch, topic, partition=partition)
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            ack = await producer.send_batch(batch, topic, partition=partition)
        assert ack is not None, "send_many with no records"
        return ack

    async def publish_stock(updates: list[StockUpdate]) -> None:
        # Gateways fan out from Redis pub/sub; Kafka keeps the record for other consumers;
        # the room's stock log tells every worker's viewer engines (sold-out nudges).
        async with redis.pipeline(transaction=False) as pipe:
            queue_publish(pipe, keys.STOCK_CHANNEL, encode(updates))
            stock_log.queue(pipe, updates)
            await pipe.execute()
        for update in updates:
            await send(topics.stock_updates, encode(update), update.room_id.encode())

    stock_log = StockLogWriter()
    feed = StockFeed(publish_stock, clock=time.monotonic,
                     interval_s=settings.stock_interval_ms / 1000)
    rooms = RoomLog(redis)
    orders = Orders(redis=redis, feed=feed, send=send_many, topics=topics, stock=rooms.stock,
                    inventory=Inventory(redis,
                                        reservation_ttl_ms=settings.reservation_ttl_s * 1000,
                                        wait_replicas=settings.redis_wait_replicas),
                    partitions=settings.partitions, rooms=rooms,
                    behind=lambda: orders_behind())
    watcher = RuleWatcher(settings.rules_dir)
    status_file = (StatusFile(settings.status_dir, pid=os.getpid(), clock=time.time)
                   if settings.status_dir is not None else None)
    progress = Progress()

    def behind(topic: str, partition: int) -> bool:
        """Whether the partition holds records the pipeline has not handled. The highwater is
        as of the last fetch, and no fetch runs in a rebalance: then assume behind."""
        tp = TP(topic, partition)
        if app.rebalancing or tp not in app.consumer.assignment():
            return True
        return progress.behind(tp, app.consumer.highwater(tp))

    def orders_behind() -> list[int]:
        """This worker's order partitions holding records the pipeline has not seen."""
        return [tp.partition for tp in app.consumer.assignment()
                if tp.topic == topics.order_events and behind(tp.topic, tp.partition)]

    def orders_owned() -> dict[int, bool]:
        """This worker's order-topic partitions, each with whether every record the broker
        held at the last fetch is applied: the sweeper may move their clocks on by wall
        time, and tells the other workers how far their orders are applied."""
        if app.rebalancing:  # no fetch runs in a rebalance: the highwaters are old
            return {}
        return progress.read_to_end({tp: app.consumer.highwater(tp)
                                     for tp in app.consumer.assignment()
                                     if tp.topic == topics.order_events},
                                    held=orders.held_from())

    timeout_ms = settings.presence_timeout_s * 1000
    engagement = Engagement(redis=redis, rules=lambda: watcher.current, rooms=rooms,
                            presence_timeout_ms=timeout_ms,
                            send=send_many,
                            topics=topics, bootstrap=settings.kafka_bootstrap,
                            behind=behind, generation=lambda: app.consumer_generation_id,
                            unapplied=orders.unapplied_from,
                            nudge_hold_s=settings.nudge_hold_s)
    # The inventory goes first: the viewer engines judge nudges by the stock levels its
    # answers bring (Engagement._stock_until). The other handlers run side by side; each
    # has a batch of its own agent's topics, so the host log (its own agent) needs no
    # order against the viewer engine. Those that mostly wait on Redis come first: their
    # requests are out before the engine computes. Presence, which no handler reads,
    # writes behind the batch.
    ledger = Ledger(redis)
    pipeline = Pipeline(topics=topics, ledger=ledger, send=send, first=[orders],
                        held=orders.held_from,
                        handlers=[rooms, engagement],
                        behind=[Presence(redis, timeout_ms=timeout_ms, rooms=rooms)],
                        book_of=rooms.book_at,
                        count=counters.count)

    @app.task
    async def watch_rules() -> None:
        await watcher.run()

    @app.timer(TICK_EVERY_S)
    async def tick() -> None:
        await pipeline.retrying(engagement.tick)

    async def resume_offsets(committed: Mapping[TP, int | None]) -> dict[TP, int]:
        """Start each partition at the lowest of faust's commit, the pipeline's consumed
        offset and (viewer partitions) the viewer state's fence: faust's commit can be
        past records never processed. Re-read records change nothing (idempotent)."""
        viewer_tps = [tp for tp in committed
                      if tp.topic in (topics.viewer_events, topics.order_events)]
        # Redis away during a rebalance: wait for it, as the pipeline does, not crash.
        fences = await pipeline.retrying(
            lambda: engagement.saved_fences({tp.partition for tp in viewer_tps}))
        consumed = await pipeline.retrying(ledger.consumed)
        starts: dict[TP, int] = {}
        for tp, at in committed.items():
            # Always an explicit seek: it also drops what the fetcher read ahead for the
            # old generation, which the agent then discards.
            starts[tp] = start_of(committed=at, consumed=consumed.get(f"{tp.topic}:{tp.partition}"),
                                  fence=fences.get(tp.partition, {}).get(tp.topic),
                                  engine=tp in viewer_tps)
            progress.start(tp, starts[tp])
        await pipeline.retrying(
            lambda: engagement.adopt({tp.partition for tp in viewer_tps}))
        if status_file is not None:
            status_file.started(starts, generation=app.consumer_generation_id)
        return starts

    app.resume_offsets = resume_offsets
    status = Status(group=group_id(settings.topic_prefix),
                    events=lambda: pipeline.events_processed,
                    retries=lambda: pipeline.retries, clock=time.monotonic)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # as on_revoked
    def on_assigned(sender: object, assigned: set[TP], **_: object) -> None:
        status.assigned(assigned)
        if status_file is not None:
            status_file.assigned(assigned, generation=app.consumer_generation_id)

    @app.timer(STATUS_EVERY_S)
    async def report_status() -> None:
        status.progress({tp: progress.lag(tp, app.consumer.highwater(tp))
                         for tp in app.consumer.assignment()})

    if status_file is not None:
        @app.timer(1.0)
        async def write_status() -> None:
            status_file.rules(watcher.current.digest, watcher.last_error)
            status_file.dropped(engagement.stale)

    # faust types a receiver as taking `signal=` by keyword; ours takes it in `**_`.
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: object, revoked: set[TP], **_: object) -> None:
        # Whoever gets these partitions next loads their viewers from Redis: saved first.
        progress.drop(revoked)
        given = [tp.partition for tp in revoked if tp.topic == topics.order_events]
        await pipeline.retrying(lambda: orders.release(given))
        await engagement.close({tp.partition for tp in revoked
                                if tp.topic in (topics.viewer_events, topics.order_events)})

    # faust sends no revoke at a clean stop: its consumer is stopped, the producer not yet
    # flushed, so this is where the last second's state is saved.
    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # as on_revoked
    async def on_shutdown(sender: object, **_: object) -> None:
        await pipeline.retrying(lambda: orders.release(list(orders.held_partitions())))
        await engagement.close()

    @app.timer(SWEEP_EVERY_S)
    async def sweep() -> None:
        await pipeline.retrying(lambda: orders.sweep(owned=orders_owned()))

    @app.task
    async def trailing_stock() -> None:
        # Held stock updates go out the moment their interval ends (the trailing edge);
        # the batch path sends the leading edge itself.
        await feed.trailing(lambda: pipeline.retrying(feed.flush))

    async def consume(stream: faust.StreamT[Any]) -> None:
        # `take_events` is faust-streaming's own, missing from its StreamT protocol.
        async for events in stream.take_events(  # type: ignore[attr-defined]
                BATCH_MAX, within=BATCH_WITHIN_S):
            await handle_batch(events)

    async def handle_batch(events: Sequence[EventT[Any]]) -> None:
        # take() buffers across a rebalance; faust's own loop drops records fetched in
        # an older generation, and so must we: their partition has been re-sought (or
        # given away), so they would reach the state ahead of the records before them.
        generation = app.consumer_generation_id
        current = [e for e in events if e.message.generation_id == generation]
        stale = len(events) - len(current)
        # A jump in a partition's offsets is a record the broker let the fetch skip
        # (stream/worker/gaps.py): read it now, before the records after it.
        records = await gaps.fill(_records(current, taken=time.monotonic()),
                                  lambda topic, p: progress.processed.get(TP(topic, p)),
                                  bootstrap=settings.kafka_bootstrap)
        for chunk in _pieces(records, orders_topic=topics.order_events):
            await progress.process(chunk, handle=pipeline.process)
            if status_file is not None:
                status_file.read([(r.topic, r.partition, r.offset) for r in chunk],
                                 stale=stale)
                stale = 0
        if stale and status_file is not None:
            status_file.read([], stale=stale)

    # One agent reads a viewer's two topics, so one coroutine owns each viewer's state.
    viewers = app.topic(topics.viewer_events, topics.order_events, value_serializer="raw",
                        key_serializer="raw", partitions=settings.partitions)
    hosts = app.topic(topics.host_events, value_serializer="raw", key_serializer="raw",
                      partitions=settings.partitions)
    app.agent(viewers, name="viewers")(consume)
    app.agent(hosts, name="hosts")(consume)
    return app


class _Worker(faust.Worker):
    """faust's worker, except that a stop signal before the first assignment exits at
    once. Without partitions there is no offset to commit and no batch in flight, while
    faust's graceful stop would first wait for the group join under way to finish: 4 s
    measured on an idle machine, past `up`'s 10 s grace under load (issue 16: `up`'s
    Ctrl-C test timing out in 1 of 2 loaded runs)."""

    holding = False

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        if not self.holding:
            status_log.info("stopping before holding any partition: nothing to commit")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        super()._schedule_shutdown(signal)


def _chunks(records: list[Record], limit: int) -> list[list[Record]]:
    """Consecutive runs of records of about `limit` bytes (at least one record each)."""
    out: list[list[Record]] = []
    size = limit
    for r in records:
        if size >= limit:
            out.append([])
            size = 0
        out[-1].append(r)
        size += len(r.value)
    return out


def _pieces(records: list[Record], *, orders_topic: str) -> list[list[Record]]:
    """A take in the pieces the pipeline handles: its order records first, in as few as
    ORDER_PIECE_BYTES allow, then the rest in runs of CHUNK_BYTES. Each partition's
    records keep their order."""
    orders = [r for r in records if r.topic == orders_topic]
    rest = [r for r in records if r.topic != orders_topic]
    return _chunks(orders, ORDER_PIECE_BYTES) + _chunks(rest, CHUNK_BYTES)


def _records(events: Sequence[EventT[Any]], *, taken: float) -> list[Record]:
    return [Record(e.message.topic, e.message.partition, e.message.offset, e.value,
                   e.message.generation_id or 0, taken) for e in events]


def run(settings: Settings, *, loglevel: str = "warn") -> None:
    """Run one worker until SIGTERM/SIGINT (blocking)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings.kafka_bootstrap,
                                          Topics(settings.topic_prefix),
                                          partitions=settings.partitions))
    # Fails fast (one line, exit 2) on a Redis it cannot reach or a cluster it cannot use,
    # before faust starts a consumer that would wait on it for ever.
    try:
        cluster = loop.run_until_complete(
            detect(settings.redis_url, timeout_s=settings.redis_connect_timeout_s))
    except RedisUnusable as exc:
        print(f"error: livecommerce worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(settings, cluster=cluster)
    attach_handler()
    joining(group_id(settings.topic_prefix), broker_url(settings), engine=ENGINE)
    worker = _Worker(app, loop=loop, loglevel=loglevel, quiet=True)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # as on_revoked
    def holding(sender: object, assigned: set[TP], **_: object) -> None:
        worker.holding = True
    # A batch allocates ~10 tracked objects per event, so the default gen-0 threshold (700)
    # ran a collection every few dozen events, and each older-generation pass walked every
    # viewer's state: ~25% of the worker's time. Start-up objects never die: freeze them.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # aiokafka formats a debug record for every message it sends (each nudge and tag):
    # ~10% of the worker's time, even when nothing prints it.
    if loglevel.lower() != "debug":
        logging.getLogger("aiokafka").setLevel(logging.INFO)
    worker.execute_from_commandline()
