"""The garbage collector of a gateway process, tuned for a connect storm.

Every live subscriber holds a few hundred container objects (its request, protocol,
WebSocket reader and writer, tasks, subscription) that stay alive as long as its
socket. With CPython's default thresholds (700, 10, 10) a storm of new subscribers
runs a young collection every two connects and, as the heap grows, full collections
that walk every subscriber already connected plus everything imported at startup.
Measured with 5,000 WebSocket connects against one gateway process (2 cores shared
with other sessions, load average 15-20): the collector took 2.0-2.5 ms of wall time
per connect with the defaults, 1.4-1.5 ms with the startup heap frozen, 0.3-0.4 ms
frozen and with these thresholds; the gateway's CPU per connect fell from 920-990 us
to 460-640 us (docs/performance.md, "The connect storm, profiled", for the storm
bench's figures).
"""

from __future__ import annotations

import gc

# A young collection every 10,000 allocations (about 30 connects) instead of 700; the
# middle generation every 50 of those; full collections as before, every 10 of those
# and only once the long-lived heap grew by a quarter (CPython's own rule).
THRESHOLDS = (10_000, 50, 10)


def tune_gc() -> None:
    """Freeze what exists now (imports, the app, its routes) out of every later
    collection, and collect less often. Call once, after the gateway started."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
