"""Shared fixtures: one embedded stack (real tansu + valkey) for the whole session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from stream.core.config import Settings
from stream.local.embedded import EmbeddedStack


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
    """Say at the end of the run which browser tests were skipped on request: a skip
    must never pass unnoticed (tests/browser.py)."""
    from browser import SKIP_ASKED

    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if SKIP_ASKED in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.section("browser tests skipped", yellow=True, bold=True)
        terminalreporter.line(f"{len(skipped)} browser test(s) did not run ({SKIP_ASKED}):")
        for report in skipped:
            terminalreporter.line(f"  {report.nodeid}")
