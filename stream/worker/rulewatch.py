"""Hot reload of `rules/`: poll the files, swap in a good version, refuse a bad one.

SPEC (Nudge rules): a bad rule file is refused with a message naming the file, rule and
field, and the running rules stay in force. Polling rather than inotify keeps this free
of new dependencies and works the same on bind mounts and network filesystems.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Info

from stream.engine.rules import FILES, RuleError, Rules, load_dir

log = logging.getLogger(__name__)

RELOADS = Counter("lc_rule_reloads_total", "Rule reloads after a file change", ["outcome"])
CURRENT = Info("lc_rules", "The rules in force")

# A file whose mtime is this recent may be written again within the same timestamp tick
# (coarse filesystems: 1-2 s) without its stat changing, so it is re-hashed until older.
RACY_S = 2.0

# One stat per known file: (name, inode, size, mtime_ns, ctime_ns), or None when the
# directory is gone. ctime because tools that keep mtime (cp -p, rsync -t) still change it.
StatKey = tuple[tuple[str, int, int, int, int], ...] | None


def load_rules(path: Path) -> Rules:
    """`load_dir`, but a missing directory or one without any rule file is an error too.

    `load_dir` fills absent files with defaults; a wrong `LIVECOMMERCE_RULES_DIR` would
    otherwise run a worker with no nudges at all, silently.
    """
    if not path.is_dir():
        what = "not a directory" if path.exists() else "rules directory not found"
        raise RuleError(f"{path}: {what}")
    if not any((path / name).is_file() for name in FILES):
        raise RuleError(f"{path}: no rule files (expected one of {', '.join(FILES)})")
    return load_dir(path)


class RuleWatcher:
    """Holds the rules in force for one rules directory and reloads them on change."""

    def __init__(self, path: Path) -> None:
        """Load now; a RuleError propagates, since a worker must not start on bad rules."""
        self.path = path
        self._key, racy = self._snapshot()
        self._content = self._digest()
        self.current: Rules = load_rules(path)
        self.last_error: str | None = None
        self._callbacks: list[Callable[[Rules], None]] = []
        self._checked: StatKey = self._key
        self._racy = racy
        self._refused: str | None = None
        CURRENT.info({"digest": self.current.digest, "path": str(path)})

    def on_change(self, callback: Callable[[Rules], None]) -> None:
        """Call `callback(rules)` after each successful reload (not for the initial load)."""
        self._callbacks.append(callback)

    async def run(self, *, every_s: float = 1.0) -> None:
        """Poll forever; cancel the task to stop. An edit is in force within ~2 polls."""
        while True:
            await asyncio.sleep(every_s)
            # A few stats and reading a few KB: cheaper inline than a thread hop, and it
            # keeps the callbacks on the event loop.
            try:
                self.poll()
            except Exception:  # never let one odd poll end hot reload for the process
                log.exception("rule watch poll failed")

    def poll(self) -> bool:
        """One check of the directory; True when new rules were swapped in."""
        key, racy = self._snapshot()
        if key != self._key:
            # Changed since the last poll: give the writer one interval to finish, so a
            # half-saved file is not refused with a confusing message.
            self._key = key
            return False
        if key == self._checked and not self._racy:
            return False
        self._checked, self._racy = key, racy
        content = self._digest()
        if content == self._content:
            # Touched, or a broken edit undone: the files match the rules in force again.
            self._refused = self.last_error = None
            return False
        if content == self._refused:
            return False  # the same broken content: refused once is enough
        try:
            rules = load_rules(self.path)
        except RuleError as exc:
            self._refused = content
            self.last_error = str(exc)
            RELOADS.labels(outcome="refused").inc()
            log.warning("rules refused, keeping digest %s in force: %s",
                        self.current.digest, exc)
            return False
        self._content, self._refused, self.last_error = content, None, None
        self.current = rules
        RELOADS.labels(outcome="ok").inc()
        CURRENT.info({"digest": rules.digest, "path": str(self.path)})
        log.info("rules reloaded (digest %s): %d nudge rules", rules.digest, len(rules.nudges))
        for callback in list(self._callbacks):
            try:
                callback(rules)
            except Exception:  # one broken subscriber must not starve the others
                log.exception("rules on_change callback %r failed", callback)
        return True

    def _snapshot(self) -> tuple[StatKey, bool]:
        """The stat key of the known files, and whether any was written too recently."""
        if not self.path.is_dir():
            return None, False
        stats: list[tuple[str, int, int, int, int]] = []
        newest = 0
        for name in FILES:
            try:
                st = os.stat(self.path / name)
            except FileNotFoundError:
                continue
            stats.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
        return tuple(stats), time.time() - newest / 1e9 < RACY_S

    def _digest(self) -> str:
        """A digest of the known files' content (our own; `Rules.digest` is load_dir's)."""
        h = hashlib.sha256()
        if not self.path.is_dir():
            return "missing"
        for name in FILES:
            with contextlib.suppress(FileNotFoundError):
                raw = (self.path / name).read_bytes()
                h.update(f"{name}\0{len(raw)}\0".encode() + raw)
        return h.hexdigest()
