"""The host's view, read from the store: live metrics computed from the room's counters
(`metrics`, pure), their HTTP routes and dashboard page (`dashboard`, `static/`), the
Prometheus families (`prom`) and the post-live review (`report`).

Imports: core, engine, store; never the worker or Kafka.
"""
