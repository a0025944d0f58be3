"""Open-file limit: a gateway holds one socket per live viewer, often past the soft 1024."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_open_files(want: int | None = None) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit (or `want`); return
    the soft limit now in force. Never lowers it; the hard limit needs root or ulimit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else want
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
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
