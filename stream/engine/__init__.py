"""The viewer engine, pure: per-viewer state (`state`), timers on event time, nudge and
tag decisions (`viewers` over `handlers` and `timers`, returning `effects`; `nudges`,
`tags`), the rule files' schema and loader (`rules`), the room as host events describe
it (`timeline`), stock as the engine sees it (`stock`), how far a room's timers may run
(`watermark`), and the merge of a partition's two input topics back into event-time
order (`reorder`). For `rules backtest`: a past broadcast replayed through the engine
(`replay`) with the inventory's rules in memory (`stockmodel`).

The hot modules run compiled with mypyc when `make` has built them (`native`; `ENGINE`
says which: "compiled", or "pure" and why); the sources are the engine either way.

Imports: `stream.core` only; never redis, aiohttp, aiokafka or faust. Everything here is
tested without a server.
"""

from stream.engine import native as _native

ENGINE = _native.load(__path__)
