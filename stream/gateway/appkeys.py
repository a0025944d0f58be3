"""What the gateway's handlers find on their `web.Application` (typed app keys)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from stream.core.config import Settings
from stream.core.topics import Topics
from stream.gateway.hub import LiveHub
from stream.gateway.nudgefeed import NudgeRelay
from stream.gateway.producer import EnvelopeProducer
from stream.hostview.access import TOKENS
from stream.store.connect import Client
from stream.store.inventory import Inventory
from stream.store.roomlog import HostLog

SETTINGS = web.AppKey("settings", Settings)
REDIS: web.AppKey[Client] = web.AppKey("redis")
PRODUCER = web.AppKey("producer", EnvelopeProducer)
TOPICS = web.AppKey("topics", Topics)
STOCK_HUB = web.AppKey("stock_hub", LiveHub)
HOST_LOG = web.AppKey("host_log", HostLog)
NUDGE_RELAY = web.AppKey("nudge_relay", NudgeRelay)
# Applies stock loads before the 202 (ingest.py); stock is read through StockReader.
INVENTORY = web.AppKey("inventory", Inventory)
# Writes answered 503 that still wait for the broker (ingest.py settles them).
PENDING = web.AppKey("pending", set[asyncio.Task[None]])

__all__ = ["HOST_LOG", "INVENTORY", "NUDGE_RELAY", "PENDING", "PRODUCER", "REDIS", "SETTINGS",
           "STOCK_HUB", "TOKENS", "TOPICS"]
