"""The gateway on the real stack: auth, partial acceptance, status codes, envelopes in Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import orjson
import pytest
from aiohttp import ClientSession
from aiokafka import AIOKafkaConsumer
from helpers import ev, now_ms, running_gateway
from redis.asyncio import Redis

from stream.core.auth import Tokens
from stream.core.codec import decode_events
from stream.core.config import Settings
from stream.core.models import DeadLetter
from stream.core.topics import Topics, key_of, partition_for
from stream.store import keys

pytestmark = pytest.mark.integration


class Client:
    def __init__(self, session: ClientSession, url: str, tokens: Tokens) -> None:
        self.session, self.url, self.tokens = session, url, tokens

    async def post(self, body: bytes | list[dict], *, role: str | None = "platform",
                   token: str | None = None) -> tuple[int, dict]:
        headers = {}
        if token is None and role is not None:
            token = self.tokens.for_role(role)  # type: ignore[arg-type]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.post(f"{self.url}/v1/events", data=data,
                                     headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    settings = msgspec.structs.replace(settings, max_body_bytes=64 * 1024)
    async with running_gateway(settings) as (_, url, tokens), ClientSession() as session:
        yield Client(session, url, tokens)


async def read_topic(settings: Settings, topic: str, *, want: int) -> list[tuple[int, bytes]]:
    """(partition, value) of records on `topic`, until `want` events are seen or 10 s pass."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, bytes]] = []
    seen = 0
    try:
        for _ in range(50):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    out.append((r.partition, r.value))
                    seen += len(decode_events(r.value).events) or 1
            if seen >= want:
                break
    finally:
        await consumer.stop()
    return out


async def test_token_rules(client: Client) -> None:
    body = [ev("viewer.heartbeat")]
    assert (await client.post(body, role=None))[0] == 401
    assert (await client.post(body, token="nope"))[0] == 401
    status, answer = await client.post([ev("viewer.heartbeat"), ev("order.paid")])
    assert status == 403 and "commerce" in answer["error"]
    status, answer = await client.post([ev("stock.set", sku="a", qty=5)], role="commerce")
    assert status == 403 and "host" in answer["error"]
    assert (await client.post([ev("stock.set", sku="a", qty=5)], role="host"))[0] == 202
    assert (await client.post([ev("order.paid")], role="commerce"))[0] == 202


async def test_body_errors(client: Client) -> None:
    status, answer = await client.post(b"[{not json")
    assert status == 400 and "JSON" in answer["error"]
    assert (await client.post(b"   "))[0] == 400
    status, _ = await client.post([ev("interaction.comment", text="x" * 400)] * 400)
    assert status == 413


async def test_partial_acceptance_names_fields(client: Client, settings: Settings) -> None:
    good = [ev("viewer.joined", source="douyin", viewer_id=f"v{i}") for i in range(5)]
    dup = dict(good[0])
    body = [
        good[0],
        {**ev("interaction.like"), "count": "many"},            # wrong type
        good[1],
        {k: v for k, v in ev("cart.added", sku="s", qty=1).items() if k != "sku"},  # missing
        {**ev("viewer.heartbeat"), "ts": now_ms() + 3_600_000},  # an hour ahead
        good[2],
        {**ev("interaction.comment"), "text": "x" * 501},       # oversize text
        {**ev("viewer.left"), "type": "viewer.teleported"},      # unknown type
        dup,                                                      # duplicate in batch
        good[3],
        good[4],
    ]
    status, answer = await client.post(body)
    assert status == 202
    assert answer["accepted"] == 5
    errors = {r["index"]: r["error"] for r in answer["rejected"]}
    assert sorted(errors) == [1, 3, 4, 6, 7, 8]
    assert "$.count" in errors[1]
    assert "sku" in errors[3]
    assert "ts" in errors[4] and "future" in errors[4]
    assert "$.text" in errors[6]
    assert "$.type" in errors[7]
    assert "duplicate" in errors[8]

    # A retry of the same events: every one refused as a duplicate, nothing written twice.
    status, again = await client.post(good)
    assert again["accepted"] == 0 and len(again["rejected"]) == 5
    assert all("duplicate" in r["error"] for r in again["rejected"])

    topics = Topics(settings.topic_prefix)
    records = await read_topic(settings, topics.viewer_events, want=5)
    got = [(p, e) for p, value in records for _, e in decode_events(value).events]
    assert sorted(e.event_id for _, e in got) == sorted(g["event_id"] for g in good)
    for partition, event in got:
        assert partition == partition_for(key_of(event), settings.partitions)

    letters = await read_topic(settings, topics.dead_letters, want=5)
    dead = [msgspec.json.decode(v, type=DeadLetter) for _, v in letters]
    # A repeat inside one body is a client bug (dead-lettered); a repeat across requests
    # is a retry of something already delivered (refused, not dead-lettered).
    assert sorted(d.origin.index for d in dead) == [1, 3, 4, 6, 7, 8]
    assert all(d.origin.source == "gateway" and d.error for d in dead)


async def test_ndjson_and_envelopes(client: Client, settings: Settings) -> None:
    events = [ev("product.viewed", sku="rice", viewer_id=f"w{i % 7}") for i in range(200)]
    body = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
    status, answer = await client.post(body)
    assert (status, answer["accepted"], answer["rejected"]) == (202, 200, [])
    records = await read_topic(settings, Topics(settings.topic_prefix).viewer_events, want=200)
    # 7 viewers over 4 partitions: far fewer records than events.
    assert len(records) <= settings.partitions
    assert sum(len(decode_events(v).events) for _, v in records) == 200


async def test_an_id_left_pending_is_retried_not_taken_for_delivered(
        client: Client, settings: Settings) -> None:
    """A request that claimed an id and died before Kafka (Redis went away mid-request)
    leaves it pending: a retry waits a little, is then told to come back (not that it was
    delivered), and is taken once the claim expires."""
    event = ev("viewer.joined", source="douyin")
    redis = Redis.from_url(settings.redis_url)
    try:
        # The dead request's liveness key lives until the first retry has been told to
        # come back (however long a loaded machine makes its PENDING_WAITS polls), then
        # expires: the test waits for the expiry itself, not for a guess of its time.
        live = keys.request("dead-request")
        await redis.set(keys.seen_event(event["event_id"]), "dead-request")
        await redis.set(live, "live")
        status, body = await client.post([event])
        assert status == 503 and "retry" in body["error"]
        await redis.pexpire(live, 50)
        async with asyncio.timeout(10):
            while await redis.exists(live):
                await asyncio.sleep(0.02)
        status, body = await client.post([event])
        assert (status, body) == (202, {"accepted": 1, "rejected": []})
        owner = (await redis.get(keys.seen_event(event["event_id"]))).decode()
        assert owner != "dead-request" and await redis.get(keys.request(owner)) == b"written"
        status, body = await client.post([event])
        assert status == 202 and "duplicate" in body["rejected"][0]["error"]
    finally:
        await redis.aclose()
