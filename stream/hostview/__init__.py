"""The host's view, read from the store: who may read it (`access`), a room's counters
read back (`reader`), live metrics computed from them (`metrics`, pure), their HTTP
routes and dashboard page (`dashboard`, `static/`), the Prometheus families (`prom`)
and the post-live review (`report`; this show against the last ones in `compare`, a
nudge's uplift with its interval in `uplift`). After the show: pick lists (`picklist`,
pure), what they read (`afterreads`), and their routes as JSON or CSV (`exports`).

Imports: core, engine, store; never the worker or Kafka.
"""
