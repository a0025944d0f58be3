"""The viewer engine, pure: per-viewer state, timers on event time, nudge and tag
decisions (`viewers` over `handlers` and `timers`, returning `effects`; `nudges`,
`tags`), the rule files' schema and loader (`rules`), and the merge of a partition's two
input topics back into event-time order (`reorder`).

Imports: `stream.core` only; never redis, aiohttp, aiokafka or faust. Everything here is
tested without a server.
"""
