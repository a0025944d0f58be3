"""Redis, and only Redis: every key (`keys`), every Lua script beside its caller (stock
and orders in `inventory`, its script in `applyscript`, a hot SKU's buckets in
`buckets`; once-per-record counters in `ledger`, host events in `roomlog`, room clocks
in `clocks`, `presence`, the viewer engines' saved state in `viewerstate`, effect claims
in `claims`, event-id claims in `eventids`, nudges held for a screen in `nudgebox`),
reads without the scripts (`stockread`, `stocklog`, `currenttags`, `orderbook`), the one
client, single node or cluster (`connect`), replies as bytes (`replies`), pub/sub to the
gateways (`channels`), and pipelines that skip redis-py's `SCRIPT EXISTS` round trip
(`scripts`).

Imports: `stream.core`, `stream.engine` and redis. Nothing here talks to Kafka or HTTP.
"""
