"""Open-file limit: a gateway holds one socket per live viewer, often past the soft 1024."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# 50,000 screens per gateway plus a reconnect storm of as many again, plus Redis, Kafka
# and slack: 2**17. A socket costs the kernel ~1-2 KiB of its own, so the limit is cheap.
WANT = 1 << 17


def raise_open_files(want: int | None = None) -> int:
    """Raise this process's RLIMIT_NOFILE to `want` (default `WANT`); return the soft
    limit now in force. Never lowers it. The hard limit is raised too where the process
    may (root, CAP_SYS_RESOURCE, up to fs.nr_open); elsewhere the soft limit stops at it."""
    target = WANT if want is None else want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if target <= soft:
        return soft
    if hard != resource.RLIM_INFINITY and target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard  # not allowed past the hard limit here: as far as it goes
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit to %d: %s", target, exc)
    return soft


def open_files() -> int:
    """This process's soft RLIMIT_NOFILE (what it may open now)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
