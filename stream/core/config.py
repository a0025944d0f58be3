"""Settings, read once from the environment (12-factor); every field is optional."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

ENV_PREFIX = "LIVECOMMERCE_"


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """What a process needs to find its peers. Empty URLs mean "start the embedded stack"."""

    kafka_url: str = ""
    redis_url: str = ""
    rules_dir: Path = Path("rules")
    tokens_file: Path | None = None
    # Where `up` says where it runs, for the commands started next to it (unset:
    # `.livecommerce/up.json` under the working directory).
    state: Path | None = None
    http_port: int = 8080
    topic_prefix: str = "lc."
    # Viewer and order topics must have the same count so one viewer's events meet in
    # one partition; tansu cannot add partitions later, so this is fixed at creation.
    partitions: int = 8
    # Events stamped further ahead than this are refused: a clock that far off is a bug.
    max_future_ms: int = 300_000
    # How long the gateway remembers an event_id to refuse a duplicate.
    dedupe_ttl_s: int = 600
    # An order's reservation lasts this long on event time (15 min), then is released.
    reservation_ttl_s: int = 900
    max_body_bytes: int = 1 << 20
    # Live stock: at most one update per SKU per interval (100 ms = 10/s), newest always
    # sent. The interval is also the floor of the p99 latency to a viewer's screen.
    stock_interval_ms: int = 100
    # Requests per token and gateway process (`limits` syntax, `;` between several;
    # "off" disables). Generous: one platform or commerce token carries a whole backend.
    rate_limit: str = "2000/second"
    # The gateway answers 503 + Retry-After when Kafka has not acked a request's events
    # within this (a paused or failing-over broker); the write goes on and settles the
    # ids. 3 s: ~100x the p99 ack on loopback, well under a client's usual 10-30 s timeout.
    produce_timeout_ms: int = 3000
    # Per viewer token (WebSocket connects with `token=`): stops reconnect storms.
    viewer_rate_limit: str = "20/second"
    # Browser pages on other origins that may read the public stock (JSON, SSE, the
    # browser client) and post events: comma-separated `scheme://host[:port]`; `*` opens
    # the public stock endpoints only. Empty: same origin only.
    cors_origins: str = ""
    # A new connection whose first request header (or a POST body) has not arrived in
    # this time is closed (the body: 408): half-open connections must not hold a
    # gateway's file descriptors. Idle keep-alive is separate (gateway.halfopen).
    read_timeout_s: int = 30
    # Concurrent SSE + WebSocket subscribers per gateway process; past it `503` +
    # `Retry-After`. 60,000 = the fan-out benchmark's 50,000 screens plus 20% headroom
    # (the gateway also lowers it below the open-file limit, see gateway.subscribers).
    max_subscribers: int = 60_000
    # A nudge fired while its viewer has no open socket is held this long for their
    # reconnect (mobile sockets drop for seconds to a minute: a tunnel, a backgrounded
    # app), then dropped and counted as `suppressed:<rule>:expired`.
    nudge_hold_s: int = 60
    # A process that cannot use its Redis (unreachable, a cluster with slots unserved)
    # says so and exits after this long: 25 s fits the ~30 s an operator or an
    # orchestrator's start probe waits, and outlasts a cluster still forming (~2 s here).
    redis_connect_timeout_s: int = 25
    # After each inventory script, wait until this many replicas have its writes (WAIT)
    # before the order result goes out; 0 = do not wait (see README: failover).
    redis_wait_replicas: int = 0
    # A viewer is online while their last event is younger than this, in room event time;
    # 60 s is two of the app's 30 s heartbeats, so one lost heartbeat drops no one.
    presence_timeout_s: int = 60
    # A worker writes its assignment, read offsets, starts and rules in force to
    # `worker-<pid>.json` here (stream.worker.statusfile); unset, no file. For tests and
    # for an operator's look at one worker, not for monitoring (that is /metrics).
    status_dir: Path | None = None

    @property
    def kafka_bootstrap(self) -> str:
        """`kafka://host:port,host:port` or plain `host:port` -> `host:port,...`."""
        return self.kafka_url.removeprefix("kafka://")


_INTS = {"http_port", "partitions", "max_future_ms", "dedupe_ttl_s", "max_body_bytes",
         "stock_interval_ms", "read_timeout_s", "max_subscribers",
         "nudge_hold_s", "reservation_ttl_s", "redis_connect_timeout_s",
         "redis_wait_replicas", "produce_timeout_ms", "presence_timeout_s"}
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+\Z")


def parse_origins(raw: str) -> tuple[str, ...]:
    """`LIVECOMMERCE_CORS_ORIGINS` -> origins; each `scheme://host[:port]` (no path, no
    trailing slash: a browser's `Origin` never has one) or `*`."""
    origins = tuple(o.strip() for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(f"{ENV_PREFIX}CORS_ORIGINS: {origin!r} is not an origin "
                             "(expected scheme://host[:port] without a path, or *)")
    return origins


def from_env(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from `LIVECOMMERCE_*` variables; keyword overrides win."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in Settings.__struct_fields__:
        raw = env.get(ENV_PREFIX + field.upper())
        if raw is None or raw == "":
            continue
        if field in _INTS:
            try:
                values[field] = int(raw)
            except ValueError:
                name = ENV_PREFIX + field.upper()
                raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
        elif field in ("rules_dir", "tokens_file", "state", "status_dir"):
            values[field] = Path(raw)
        else:
            values[field] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    parse_origins(str(values.get("cors_origins", "")))  # refused at start, naming it
    return Settings(**values)  # type: ignore[arg-type]


def to_env(settings: Settings) -> dict[str, str]:
    """The variables that make a child process see the same Settings."""
    out: dict[str, str] = {}
    for field in Settings.__struct_fields__:
        value = getattr(settings, field)
        if value is None or value == "":
            continue
        out[ENV_PREFIX + field.upper()] = str(value)
    return out
