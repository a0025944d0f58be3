"""The embedded stack: real tansu + valkey children that answer, stop, and never outlive us."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from stream.local.embedded import EmbeddedStack, EmbeddedStackError, free_port, wait_for_kafka

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def pid_alive(pid: int) -> bool:
    """False once the pid is gone or a zombie (an orphan's reaper may be slow or absent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill(0)
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def roundtrip(bootstrap: str, topic: str, value: bytes) -> bytes:
    """Produce one message and read it back from the start of the topic."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    # No group: an assigned partition needs no group join, which keeps this fast.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 15)
    finally:
        await consumer.stop()
    return msg.value


async def test_start_use_stop() -> None:
    stack = EmbeddedStack()
    async with stack:
        assert stack.kafka is not None and stack.redis is not None
        assert stack.kafka_url.startswith("kafka://127.0.0.1:")
        assert stack.redis_url.startswith("redis://127.0.0.1:") and stack.redis_url.endswith("/0")
        topic = f"t-{uuid.uuid4().hex[:8]}"
        await create_topic(stack.kafka_bootstrap, topic)
        assert await roundtrip(stack.kafka_bootstrap, topic, "直播".encode()) == "直播".encode()

        redis = Redis.from_url(stack.redis_url)
        try:
            await redis.set("k", "v")
            assert await redis.get("k") == b"v"
            assert await redis.config_get("save") == {"save": ""}  # nothing written to disk
        finally:
            await redis.aclose()

        children = [stack.kafka, stack.redis]
        # Own process group: a terminal Ctrl-C reaches us, and we stop them last.
        assert all(os.getpgid(c.pid) == c.pid != os.getpgid(0) for c in children)
        workdir = stack.workdir
        assert all(c.log_path.is_file() for c in children)

    for child in children:
        assert not child.is_running()
        with pytest.raises(ProcessLookupError):
            os.kill(child.pid, 0)
        assert not port_open(child.port)
    assert not workdir.exists()
    await stack.stop()  # idempotent


async def test_partial_start_and_redis_down_up() -> None:
    stack = EmbeddedStack()
    await stack.start(kafka=False)
    try:
        assert stack.kafka is None
        with pytest.raises(RuntimeError):
            _ = stack.kafka_url
        url = stack.redis_url
        assert stack.redis is not None
        port = stack.redis.port
        redis = Redis.from_url(url)  # connected across the outage, like a worker
        try:
            await redis.set("k", "v")
            await stack.stop_redis()
            assert not port_open(port)
            await stack.start_redis()
            assert stack.redis_url == url and stack.redis.port == port
            # redis-py fails once on the pooled connection the old server closed, then
            # reconnects: callers that ride out an outage must retry.
            with contextlib.suppress(RedisConnectionError):
                await redis.ping()
            assert await redis.get("k") is None  # in-memory only: the data went with it
        finally:
            await redis.aclose()
    finally:
        await stack.stop()


async def test_restart_kafka_same_port_fresh_storage() -> None:
    stack = EmbeddedStack()
    await stack.start(redis=False)
    try:
        assert stack.kafka is not None
        url, old_pid = stack.kafka_url, stack.kafka.pid
        topic = f"t-{uuid.uuid4().hex[:8]}"
        await create_topic(stack.kafka_bootstrap, topic)
        # A client still connected across the restart must not keep the port busy.
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before")
            await stack.restart_kafka()
        finally:
            await producer.stop()
        assert stack.kafka_url == url
        assert stack.kafka.pid != old_pid and not pid_alive(old_pid)
        await wait_for_kafka(stack.kafka_url, timeout=5)
        assert topic not in await list_topics(stack.kafka_bootstrap)  # memory storage reset
        await create_topic(stack.kafka_bootstrap, topic)
        assert await roundtrip(stack.kafka_bootstrap, topic, b"after") == b"after"
    finally:
        await stack.stop()


async def test_taken_port_fails_with_log_tail() -> None:
    """A port taken by someone else, even by another broker that answers, is not "ready"."""
    other = EmbeddedStack()
    await other.start(redis=False)
    try:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            for port in (silent.getsockname()[1], other.kafka.port if other.kafka else 0):
                stack = EmbeddedStack()
                stack._kafka_port = port  # as if restarting on a port taken meanwhile
                with pytest.raises(EmbeddedStackError, match=r"(?i)addr(ess)? ?in ?use"):
                    await stack.start(redis=False, timeout=10)
                assert stack.kafka is None
                await stack.stop()
    finally:
        await other.stop()


SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from stream.local.embedded import EmbeddedStack

    async def main():
        stack = EmbeddedStack()
        await stack.start()
        print(json.dumps({"pids": [stack.kafka.pid, stack.redis.pid],
                          "ports": [stack.kafka.port, stack.redis.port],
                          "workdir": str(stack.workdir)}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_children_die_with_a_sigkilled_parent() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    info: dict[str, Any] | None = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the stack is up (or the script died)
        assert line, proc.stderr.read().decode() if proc.stderr else "no output"
        info = json.loads(line)
        assert all(pid_alive(pid) for pid in info["pids"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in info["pids"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in info["pids"])
        assert not any(port_open(p) for p in info["ports"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if info is not None:
            # A SIGKILLed parent cannot clean its temp dir; that much is expected.
            shutil.rmtree(info["workdir"], ignore_errors=True)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
