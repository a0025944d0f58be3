"""Shared fixtures: one embedded stack (real tansu + valkey) for the whole session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka import AIOKafkaProducer
from helpers import INVENTORY_TTL_MS
from redis.asyncio import Redis

from stream.core.config import Settings
from stream.core.topics import Topics
from stream.local.embedded import EmbeddedStack
from stream.store.inventory import Inventory
from stream.worker.admin import ensure_topics


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[EmbeddedStack]:
    s = EmbeddedStack()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def settings(stack: EmbeddedStack) -> Settings:
    """Settings on the shared stack, with topics of its own so tests do not see each other."""
    return Settings(kafka_url=stack.kafka_url, redis_url=stack.redis_url,
                    topic_prefix=f"t{uuid.uuid4().hex[:8]}.", partitions=4)


@pytest.fixture
async def redis(stack: EmbeddedStack) -> AsyncIterator[Redis]:
    """A client of the shared stack's valkey."""
    client = Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def db(stack: EmbeddedStack) -> AsyncIterator[Redis]:
    """A database of the shared stack's valkey of its own, empty before and after: for
    code that walks every room it knows of (the sweeper). Each xdist worker has its own
    stack, and the tests of one run one after another."""
    client = Redis.from_url(stack.redis_url, db=7)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer on the shared broker, with the settings' topics created."""
    await ensure_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix),
                        partitions=settings.partitions)
    client = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
async def inv(stack: EmbeddedStack) -> AsyncIterator[Inventory]:
    """The inventory scripts on the shared valkey, reservations held INVENTORY_TTL_MS."""
    client = Redis.from_url(stack.redis_url)
    yield Inventory(client, reservation_ttl_ms=INVENTORY_TTL_MS)
    await client.aclose()


@pytest.fixture
def room() -> str:
    """A room id of the test's own."""
    return f"room-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
async def redis_cluster(stack: EmbeddedStack) -> AsyncIterator[EmbeddedStack]:
    """An embedded Redis Cluster of 3 masters (no replicas), next to the shared broker."""
    s = EmbeddedStack(redis_cluster=3)
    await s.start(kafka=False)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def cluster_settings(stack: EmbeddedStack, redis_cluster: EmbeddedStack) -> Settings:
    """Settings on the shared broker and the 3-master cluster, with topics of their own."""
    return Settings(kafka_url=stack.kafka_url, redis_url=redis_cluster.redis_url,
                    topic_prefix=f"t{uuid.uuid4().hex[:8]}.", partitions=4)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say at the end of the run why each rerun ran, and which browser tests were
    skipped on request: a skip must never pass unnoticed (tests/browser.py)."""
    from browser import SKIP_ASKED

    # A rerun hides the first failure; its cause is what the next session needs to read.
    reruns = terminalreporter.stats.get("rerun", [])
    if reruns:
        terminalreporter.section("why each rerun ran", yellow=True, bold=True)
        for report in reruns:
            text = getattr(report, "longreprtext", "") or str(report.longrepr)
            errors = [line for line in text.splitlines() if line.startswith("E ")]
            terminalreporter.line(f"{report.nodeid}:")
            for line in (errors or text.splitlines())[-12:]:
                terminalreporter.line(f"  {line[:400]}")
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if SKIP_ASKED in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.section("browser tests skipped", yellow=True, bold=True)
        terminalreporter.line(f"{len(skipped)} browser test(s) did not run ({SKIP_ASKED}):")
        for report in skipped:
            terminalreporter.line(f"  {report.nodeid}")


# The suite runs on two xdist workers (`make test`: `-n 2 --dist loadgroup`): the shows
# leave the 2 cores ~70% idle while they play out in wall time (test_broadcasts: 24 s of
# CPU in 40 s), so one worker alone took 790-890 s of the 900 s budget. The fault shows
# share one group, so no two of them ever run at once: each holds its workers to bounds
# in seconds (a nudge at most 10 s late after a takeover), and the CPU they need is what
# the bound assumes. Every other file is its own unit, so a module's fixture (one show for
# test_hostview) is built once.
FAULT_SHOWS = frozenset({"test_oracle.py", "test_faults.py", "test_cluster.py",
                         "test_broker_pause.py", "test_failover.py", "test_contention.py"})


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Group each test for xdist, and send the fault shows out first: as one unit of
    ~290 s they would otherwise be the run's tail. A wrapper, so the marks are on before
    xdist's own hook reads them (a `tryfirst` hook here ran after it)."""
    def order(item: pytest.Item) -> int:
        if item.path.name in FAULT_SHOWS:
            return 0
        return 1 if item.path.parent.name == "scenarios" else 2

    for item in items:
        group = ("fault-shows" if item.path.name in FAULT_SHOWS
                 else str(item.path.relative_to(item.config.rootpath)))
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=order)
    yield
