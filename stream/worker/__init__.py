"""The stream worker, an edge: the faust app and its agents (`app`), the transport that
resumes partitions where their state is (`transport`, the pure choice in `resume`), how
far the read loop has got on each partition (`progress`), records a fetch skipped
(`gaps`), the batch path (`pipeline`), the selling path (`orders`, with a backlog's
orders held in event time by `orderhold`), the viewer path (`engagement`) and its
once-only effects (`delivery`; what a dead worker sent, read back by `sentcheck`),
coalesced stock updates (`stockfeed`), rule hot reload (`rulewatch`), topic creation
(`admin`), and what a worker says it is doing (`status`, `statusfile`).

Imports: core, engine, store, and the Kafka and Redis clients.
"""
