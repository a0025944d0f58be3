"""The stream worker, an edge: the faust app and its agents (`app`), the transport that
resumes partitions where their state is (`transport`), the batch path (`pipeline`),
the selling path (`orders`), the viewer path (`engagement`) and its once-only effects
(`delivery`), coalesced stock updates (`stockfeed`), rule hot reload (`rulewatch`) and
topic creation (`admin`).

Imports: core, engine, store, and the Kafka and Redis clients.
"""
