"""Faust's aiokafka transport with a short fetch wait.

Faust builds its consumer with `fetch_max_wait_ms=1500` and no setting to change it.
With data arriving on several partitions, tansu answers a fetch only near that wait,
so events sat ~400 ms (p50) before a worker saw them; a raw aiokafka consumer at 100 ms
sees them in ~25 ms. A broker answers as soon as `fetch_min_bytes` (1) is there, so a
short wait costs only some empty fetches when idle.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 20


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """faust.App on the low-latency transport."""

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)
