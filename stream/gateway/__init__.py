"""The gateway, an edge: the aiohttp app and its wiring (`app`, typed app keys in
`appkeys`), the POST path (`ingest`), envelopes to Kafka (`producer`), live stock and
nudges to the screens: one pub/sub hub (`hub`), its SSE and WebSocket routes (`routes`)
and per-viewer nudges, each shown once (`nudgefeed`); the live room's screen: the
browser client, the viewer page and its product list (`screen`, files in `static/`).
At its edge: CORS and the WebSocket's Origin check (`cors`), JSON errors (`errors`) and
answers (`replies`), per-token rate limits (`ratelimit`), half-open connections
(`halfopen`), the subscriber cap (`subscribers`), the open-file limit (`fdlimit`), the
collector tuned for a connect storm (`gctune`) and `/openapi.json` (`openapi`).

Imports: core, engine, store, hostview (its routes), aiohttp and the Kafka producer.
"""
