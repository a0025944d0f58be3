"""A worker's state as a small JSON file, rewritten as it works (`LIVECOMMERCE_STATUS_DIR`).

The status lines (`status.py`) are for an operator, one per 15 s; this file is for a
check that needs the state at one moment: the partitions of the worker's last
assignment, how far it had read each one, where it started each partition after each
rebalance, how many taken records it dropped as stale, and the rules in force. A kill -9
test reads the victim's last file and the survivors' starts to show the survivor re-read
records the victim had processed (issue 12). Off unless the setting names a directory.

Written to a temporary name and renamed, so a kill mid-write leaves the last one whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import msgspec
from faust.types import TP


class Start(msgspec.Struct, frozen=True, kw_only=True):
    """Where a partition was started after a rebalance."""

    at: float  # wall clock, seconds
    generation: int
    topic: str
    partition: int
    offset: int


class WorkerStatus(msgspec.Struct, kw_only=True):
    pid: int
    written_at: float = 0.0
    # The generation and partitions of the last assignment (a revoke alone leaves them:
    # after a kill -9 they are what the worker held when it died).
    generation: int = -1
    assigned: list[tuple[str, int]] = msgspec.field(default_factory=list)
    # `topic:partition` -> the offset after the last record the pipeline processed.
    read: dict[str, int] = msgspec.field(default_factory=dict)
    starts: list[Start] = msgspec.field(default_factory=list)
    # Records a take() batch held from an older generation, dropped after a rebalance.
    stale: int = 0
    # Viewer records the engine dropped as of an older generation: a take() batch still
    # in the pipeline when a rebalance began (the other handlers have applied them).
    engine_stale: int = 0
    rules_digest: str = ""
    rules_error: str | None = None


def path_for(directory: Path, pid: int) -> Path:
    return directory / f"worker-{pid}.json"


def read_status(path: Path) -> WorkerStatus:
    return msgspec.json.decode(path.read_bytes(), type=WorkerStatus)


class StatusFile:
    """Keeps a WorkerStatus and writes it after each change the worker reports."""

    def __init__(self, directory: Path, *, pid: int, clock: Callable[[], float]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = path_for(directory, pid)
        self._tmp = self.path.with_suffix(".tmp")
        self._clock = clock
        self.status = WorkerStatus(pid=pid)
        self.write()  # at once: a worker that never joins says so (no partitions)

    def assigned(self, tps: Iterable[TP], *, generation: int) -> None:
        self.status.generation = generation
        self.status.assigned = sorted((tp.topic, tp.partition) for tp in tps)
        self.write()

    def started(self, starts: Mapping[TP, int], *, generation: int) -> None:
        at = self._clock()
        self.status.starts += [Start(at=at, generation=generation, topic=tp.topic,
                                     partition=tp.partition, offset=offset)
                               for tp, offset in sorted(starts.items())]
        self.write()

    def read(self, offsets: Iterable[tuple[str, int, int]], *, stale: int = 0) -> None:
        """Records (topic, partition, offset) the pipeline has processed."""
        read = self.status.read
        for topic, partition, offset in offsets:
            key = f"{topic}:{partition}"
            read[key] = max(read.get(key, 0), offset + 1)
        self.status.stale += stale
        self.write()

    def dropped(self, engine_stale: int) -> None:
        if engine_stale != self.status.engine_stale:
            self.status.engine_stale = engine_stale
            self.write()

    def rules(self, digest: str, error: str | None) -> None:
        if (digest, error) != (self.status.rules_digest, self.status.rules_error):
            self.status.rules_digest, self.status.rules_error = digest, error
            self.write()

    def write(self) -> None:
        self.status.written_at = self._clock()
        self._tmp.write_bytes(msgspec.json.encode(self.status))
        os.replace(self._tmp, self.path)
