"""Redis, and only Redis: every key (`keys`), every Lua script beside its caller (stock
and orders in `inventory`, once-per-record counters in `ledger`, host events in
`roomlog`, room clocks, presence, the viewer engines' saved state, effect claims), and
pipelines that skip redis-py's `SCRIPT EXISTS` round trip (`scripts`).

Imports: `stream.core`, `stream.engine` and redis. Nothing here talks to Kafka or HTTP.
"""
