"""livecommerce: a stream processor for live-commerce broadcasts (直播带货).

Where to start reading, following one event from the door to its effects:

1. It enters at the gateway: `gateway/app.py` builds the aiohttp app; `POST /v1/events`
   checks the token (`core/auth.py`), decodes strictly (`core/codec.py` into the Structs
   of `core/models.py`), refuses duplicates by event id in Redis and writes envelopes
   (events of one partition in one record, `gateway/producer.py`) to the input topics
   named in `core/topics.py`.
2. A worker reads it: `worker/app.py` is the faust app; every `take()` batch goes to
   `worker/pipeline.py`, which decodes, dead-letters bad records and hands one `Part`
   per record (`core/batch.py`) to the handlers.
3. It is judged: orders by `worker/orders.py` through the inventory's one Lua script per
   room and batch (`store/inventory.py`); viewer events by the pure viewer engine
   (`engine/viewers.py` over its event handlers in `engine/handlers.py` and its timers in
   `engine/timers.py`, with `engine/nudges.py`, `engine/tags.py` under the rules of
   `engine/rules.py`), driven by `worker/engagement.py`, which keeps the engine's state
   in Redis (`store/viewerstate.py`) and claims every effect once (`store/claims.py`).
4. Its effects leave: order results, nudges, tags and follow-ups to Kafka; stock levels
   coalesced (`worker/stockfeed.py`) to Redis pub/sub, from which every gateway pushes
   them to the screens (`gateway/hub.py`, `gateway/routes.py`; nudges held for a
   viewer's next socket in `store/nudgebox.py`, the browser client and viewer page in
   `gateway/screen.py`); the host's counters
   to Redis hashes that `hostview/` reads back as metrics, the dashboard, Prometheus
   and the post-live review.

The folders, and the one way their imports run:
core ← engine ← store ← {worker, hostview} ← gateway ← local ← cli. `core` and
`engine` do no I/O, `store` alone holds Redis scripts, the rest are edges;
`tests/unit/test_layout.py` keeps it so. `local/` is the lab: the embedded broker and
Redis, the runner behind `up` and `demo`, and the broadcast simulator.
"""
