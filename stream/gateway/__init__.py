"""The gateway, an edge: the aiohttp app and its POST path (`app`), envelopes to Kafka
(`producer`), live stock and nudges to the screens over SSE and WebSocket (`live`,
`nudgefeed`), per-token rate limits (`ratelimit`) and the open-file limit (`fdlimit`).

Imports: core, engine, store, hostview (its routes), aiohttp and the Kafka producer.
"""
