"""The gateway, an edge: the aiohttp app and its wiring (`app`), the POST path
(`ingest`), envelopes to Kafka (`producer`), live stock and nudges to the screens: one
pub/sub hub (`hub`), its SSE and WebSocket routes (`routes`) and per-viewer nudges,
each shown once (`nudgefeed`); the live room's screen: the browser client, the viewer
page and its product list (`screen`, files in `static/`); per-token rate limits
(`ratelimit`) and the open-file limit (`fdlimit`).

Imports: core, engine, store, hostview (its routes), aiohttp and the Kafka producer.
"""
