"""The embedded default stack: a Kafka-protocol broker (tansu) and a Redis server (valkey).

When no Kafka/Redis URL is configured, the CLI runs both as child processes on free
loopback ports, waits until they answer, and stops them on exit. They also die with
this process when it is killed outright (Linux `PR_SET_PDEATHSIG`), so nothing is
left running after a crash or a SIGKILL.

Both servers keep everything in memory: nothing survives a restart, by design.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from stream.local.children import (
    HOST,
    ChildProcess,
    EmbeddedStackError,
    _ChildExited,
    _kafka_answers,
    _redis_answers,
    _wait_until,
    die_with_parent,
    free_port,
    tansu_binary,
    valkey_binary,
    wait_for_kafka,
    wait_for_redis,
)
from stream.local.cluster import EmbeddedCluster

__all__ = ["HOST", "ChildProcess", "EmbeddedStack", "EmbeddedStackError", "die_with_parent",
           "free_port", "tansu_binary", "valkey_binary", "wait_for_kafka", "wait_for_redis"]

log = logging.getLogger(__name__)

START_ATTEMPTS = 3


# --------------------------------------------------------------------------- the stack


class EmbeddedStack:
    """tansu + valkey as child processes on free loopback ports.

    `async with EmbeddedStack() as s:` starts both; or call `start(kafka=..., redis=...)`
    to start only what the user did not configure. `stop()` is idempotent.
    """

    def __init__(self, *, log_dir: Path | None = None, durable_redis: bool = False,
                 redis_cluster: int = 0, redis_replicas: int = 0) -> None:
        # A caller-given log_dir is kept after stop(); the default temp dir is removed.
        self._log_dir = log_dir
        # An append-only file synced on every write, as a production Redis would keep:
        # then stop_redis() + start_redis() is an outage, not a wipe (fault tests).
        self._durable_redis = durable_redis
        self._workdir: Path | None = None
        self._kafka_port: int | None = None
        self._redis_port: int | None = None
        self.kafka: ChildProcess | None = None
        self.redis: ChildProcess | None = None
        # `redis_cluster` masters (each with `redis_replicas` replicas) instead of one node.
        self._cluster_size = redis_cluster
        self._cluster_replicas = redis_replicas
        self.cluster: EmbeddedCluster | None = None

    # -- addresses

    @property
    def kafka_url(self) -> str:
        """`kafka://127.0.0.1:PORT`, the form faust expects."""
        return f"kafka://{self.kafka_bootstrap}"

    @property
    def kafka_bootstrap(self) -> str:
        """`127.0.0.1:PORT`, the form aiokafka expects."""
        if self._kafka_port is None:
            raise RuntimeError("the embedded Kafka was not started")
        return f"{HOST}:{self._kafka_port}"

    @property
    def redis_url(self) -> str:
        """`redis://127.0.0.1:PORT/0`, or every node of the embedded cluster."""
        if self.cluster is not None and self.cluster.nodes:
            return self.cluster.url
        if self._redis_port is None:
            raise RuntimeError("the embedded Redis was not started")
        return f"redis://{HOST}:{self._redis_port}/0"

    @property
    def workdir(self) -> Path:
        """Where logs (and valkey's working dir) live."""
        if self._workdir is None:
            if self._log_dir is not None:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                self._workdir = self._log_dir
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix="livecommerce-stack-"))
        return self._workdir

    # -- whole stack

    async def start(self, *, kafka: bool = True, redis: bool = True,
                    timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Start the requested servers (concurrently) and wait until they answer."""
        jobs = []
        if kafka:
            jobs.append(self.start_kafka(timeout=timeout))
        if redis:
            jobs.append(self.start_redis(timeout=timeout))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()  # do not leave the half that did start running
            raise errors[0]

    async def stop(self) -> None:
        """Stop whatever runs and remove the temp dir. Safe to call any number of times."""
        await asyncio.gather(self.stop_kafka(), self.stop_redis())
        self._kafka_port = self._redis_port = None
        if self._workdir is not None and self._log_dir is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None

    async def __aenter__(self) -> Self:
        if self.kafka is None and self.redis is None:
            await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    # -- Kafka

    async def start_kafka(self, *, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Start tansu; on the port it had before if it was stopped, else a free one."""
        if self.kafka is not None:
            if self.kafka.is_running():
                raise RuntimeError(f"already running: {self.kafka}")
            await self.stop_kafka()  # it crashed: reap it before replacing it
        binary = tansu_binary()

        def argv(port: int) -> list[str]:
            listener = f"tcp://{HOST}:{port}"
            return [binary, "broker", "--listener-url", listener,
                    "--advertised-listener-url", listener,
                    "--storage-engine", "memory://tansu/"]

        self.kafka = await self._start_child(
            "tansu", argv, port=self._kafka_port, limit_s=timeout,
            url=lambda p: f"kafka://{HOST}:{p}",
            probe=lambda p: _kafka_answers(f"{HOST}:{p}"),
            # On SIGTERM tansu drains: it waits ~5 s for connected clients to leave.
            # SIGINT exits at once, and with memory storage there is nothing to save.
            stop_signal=signal.SIGINT,
        )
        self._kafka_port = self.kafka.port

    async def stop_kafka(self) -> None:
        """Stop tansu, keeping its port for start_kafka()."""
        if self.kafka is not None:
            await self.kafka.stop()
            self.kafka = None

    async def restart_kafka(self, *, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """A fresh broker on the same port: all topics and offsets are gone."""
        await self.stop_kafka()
        await self.start_kafka(timeout=timeout)

    # -- Redis

    async def start_redis(self, *, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Start valkey; on the port it had before if it was stopped, else a free one.
        With `redis_cluster`, a fresh embedded cluster instead."""
        if self._cluster_size:
            await self.stop_redis()
            self.cluster = EmbeddedCluster(masters=self._cluster_size,
                                           replicas=self._cluster_replicas,
                                           workdir=self.workdir)
            await self.cluster.start(timeout=max(timeout, 30.0))
            return
        if self.redis is not None:
            if self.redis.is_running():
                raise RuntimeError(f"already running: {self.redis}")
            await self.stop_redis()  # it crashed: reap it before replacing it
        binary = valkey_binary()
        data_dir = self.workdir / "valkey"
        data_dir.mkdir(parents=True, exist_ok=True)

        aof = (["--appendonly", "yes", "--appendfsync", "always"] if self._durable_redis
               else ["--appendonly", "no"])

        def argv(port: int) -> list[str]:
            # By default no RDB, no AOF: in memory only, like tansu's memory storage.
            # Daemonizing would detach it from us and defeat PDEATHSIG.
            return [binary, "--port", str(port), "--bind", HOST, "--save", "", *aof,
                    "--daemonize", "no", "--dir", str(data_dir), "--logfile", ""]

        self.redis = await self._start_child(
            "valkey", argv, port=self._redis_port, limit_s=timeout,
            url=lambda p: f"redis://{HOST}:{p}/0",
            probe=lambda p: _redis_answers(f"redis://{HOST}:{p}/0"),
        )
        self._redis_port = self.redis.port

    async def stop_redis(self) -> None:
        """Stop valkey (its data is gone unless durable), keeping its port for start_redis()."""
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster = None
        if self.redis is not None:
            await self.redis.stop()
            self.redis = None

    # -- shared

    async def _start_child(self, name: str, argv: Callable[[int], list[str]], *,
                           port: int | None, limit_s: float, url: Callable[[int], str],
                           probe: Callable[[int], Awaitable[bool]],
                           stop_signal: int = signal.SIGTERM) -> ChildProcess:
        deadline = time.monotonic() + limit_s
        fixed = port is not None
        last: ChildProcess | None = None
        for attempt in range(1, START_ATTEMPTS + 1):
            p = port if port is not None else free_port()
            child = ChildProcess.spawn(argv(p), name=name, url=url(p), port=p,
                                       log_path=self.workdir / f"{name}.log", cwd=self.workdir,
                                       stop_signal=stop_signal)
            last = child
            try:
                await _wait_until(functools.partial(probe, p), what=f"{name} on port {p}",
                                  limit_s=max(0.1, deadline - time.monotonic()), child=child)
            except _ChildExited:
                # Most likely someone took the port between free_port() and the bind:
                # try a new port, or the same one a little later when it is fixed.
                log.info("%s exited at start (attempt %d) on port %d", name, attempt, p)
                await child.stop()
                if fixed:
                    await asyncio.sleep(0.2 * attempt)
                continue
            except TimeoutError as e:
                await child.stop()
                raise EmbeddedStackError(
                    f"{name} did not answer within {limit_s:g} s "
                    f"(log {child.log_path}):\n{child.log_tail()}") from e
            except BaseException:
                await child.stop()
                raise
            log.info("embedded %s ready at %s (pid %d)", name, child.url, child.pid)
            return child
        assert last is not None
        raise EmbeddedStackError(
            f"{name} exited during start {START_ATTEMPTS} times; last exit code "
            f"{last.returncode} (log {last.log_path}):\n{last.log_tail()}")
