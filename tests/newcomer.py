"""Helpers for the tests that walk a newcomer's path: a checkout to stand in, and
`livecommerce` commands started there as a user would (no LIVECOMMERCE_* variable)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READY = "Ctrl-C stops everything."


def user_env(**extra: str) -> dict[str, str]:
    """The user's environment without any of our settings: the embedded default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVECOMMERCE_")}
    return {**env, **extra}


def checkout(tmp: Path) -> Path:
    """A directory that looks like a fresh clone after `make demo`: the repo's files
    linked in, and `.venv` the venv running these tests (no second install)."""
    view = tmp / "checkout"
    view.mkdir()
    (view / ".venv").symlink_to(Path(sys.prefix).resolve(), target_is_directory=True)
    for name in ("rules", "bench", "docs", "Makefile", "README.md", "pyproject.toml"):
        (view / name).symlink_to(REPO / name)
    return view


class Background:
    """A command running in the background whose output is read as it comes (a pipe
    nobody reads fills up at 64 KiB and then blocks the writer for good)."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, *, timeout_s: float = 120.0,
                 at_start: bool = False) -> str:
        """The first line containing `text` (`at_start`: that starts with it), once it
        is printed."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines:
                    if line.startswith(text) if at_start else text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{text!r} never printed (rc {self.proc.poll()}):\n"
                                         f"{self.output[-3000:]}")
                self._changed.wait(min(left, 0.5))

    def value(self, label: str) -> str:
        """What a `label   value` line of `up` says."""
        line = self.wait_for(f"{label} ", at_start=True)
        return line.split(None, 1)[1].strip()

    def interrupt(self, *, timeout_s: float = 60.0) -> int:
        """Ctrl-C, then wait for a clean exit; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def background(argv: list[str], *, cwd: Path, env: dict[str, str]) -> Iterator[Background]:
    run = Background(argv, cwd=cwd, env=env)
    try:
        yield run
    finally:
        run.kill()


def shell(command: str, *, cwd: Path, env: dict[str, str],
          timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    """`command` exactly as a user pastes it into bash."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout_s)
