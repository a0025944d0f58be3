"""The screen's routes: the client module, the viewer page and its assets, products."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from helpers import running_gateway
from redis.asyncio import Redis

from stream.core.config import Settings
from stream.store import keys

pytestmark = pytest.mark.integration


async def test_client_page_and_products_are_served(settings: Settings, redis: Redis) -> None:
    room = f"r-{uuid.uuid4().hex[:8]}"
    await redis.hset(keys.stock_prefix(room) + "rice", mapping={
        "available": 3, "reserved": 0, "sold": 0, "version": 1, "loaded": 3,
        "name": "有机胚芽米", "price": "39.9"})
    await redis.hset(keys.stock_prefix(room) + "mug", mapping={"available": 1, "version": 1})
    await redis.sadd(keys.skus(room), "rice", "mug")
    async with running_gateway(settings) as (_, url, _tokens), aiohttp.ClientSession() as s:
        async with s.get(f"{url}/client/livecommerce.js") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/javascript"  # browsers refuse other types
            assert "export function connect" in await resp.text()
        async with s.get(f"{url}/live/{room}") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "/live/assets/live.js" in await resp.text()
        async with s.get(f"{url}/live/assets/live.js") as resp:
            assert resp.status == 200
            assert 'from "/client/livecommerce.js"' in await resp.text()
        async with s.get(f"{url}/live/assets/secrets.txt") as resp:
            assert resp.status == 404
        async with s.get(f"{url}/live/bad%20room") as resp:
            assert resp.status == 400 and "room" in await resp.text()
        async with s.get(f"{url}/v1/rooms/{room}/products") as resp:
            assert await resp.json() == {"room_id": room, "products": [
                {"sku": "mug", "name": None, "price": None},
                {"sku": "rice", "name": "有机胚芽米", "price": 39.9}]}
