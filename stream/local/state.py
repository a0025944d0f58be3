"""Where a running `livecommerce up` is: a state file the other commands read.

`up` (and `demo --keep`) writes its URLs, tokens file and pid to `.livecommerce/up.json`
under the working directory, or to `LIVECOMMERCE_STATE`, and removes it on a clean
exit. `simulate`, `report`, `check` (and any later command that needs a running
system) call `find_system`, which fills in what the settings leave blank and says
where it came from, so a newcomer never has to copy a URL by hand.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from stream.core.config import Settings

DEFAULT_STATE = Path(".livecommerce") / "up.json"


class UpState(msgspec.Struct, kw_only=True):
    """What a running `up` tells the commands started next to it."""

    pid: int
    gateway_url: str
    kafka_url: str
    redis_url: str
    tokens_file: str
    dashboard_url: str = ""
    viewer_url: str = ""
    started_at: float = 0.0


class NoSystem(Exception):
    """No running system was configured or found: the message says how to get one."""


class System(msgspec.Struct, kw_only=True, frozen=True):
    """The system a command talks to, and the one-line answer to "which one?"."""

    settings: Settings
    gateway_url: str
    origin: str

    def describe(self) -> str:
        parts = [f"gateway {self.gateway_url}"] if self.gateway_url else []
        if self.settings.redis_url:
            parts.append(f"redis {self.settings.redis_url}")
        return f"using {', '.join(parts)} ({self.origin})"


def state_path(settings: Settings) -> Path:
    return settings.state if settings.state is not None else DEFAULT_STATE


def read_state(path: Path) -> UpState | None:
    """The state at `path`, or None when there is none or its `up` is gone (pid dead)."""
    try:
        state = msgspec.json.decode(path.read_bytes(), type=UpState)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise NoSystem(f"{path}: unreadable state file ({exc}): delete it and start "
                       "`livecommerce up` again") from None
    return state if _alive(state.pid) else None


@contextlib.contextmanager
def published(path: Path, state: UpState) -> Iterator[None]:
    """Write `state` to `path` for the life of the block; remove it on the way out (a
    kill -9 leaves it behind, and `read_state` then sees that its pid is gone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)) + b"\n")
    tmp.replace(path)
    try:
        yield
    finally:
        # Only our own: a second `up` started here since then owns the file now.
        with contextlib.suppress(FileNotFoundError, msgspec.DecodeError):
            if msgspec.json.decode(path.read_bytes(), type=UpState).pid == state.pid:
                path.unlink()


def new_state(*, gateway_url: str, settings: Settings, room: str, host_token: str) -> UpState:
    return UpState(pid=os.getpid(), gateway_url=gateway_url, kafka_url=settings.kafka_url,
                   redis_url=settings.redis_url, tokens_file=str(settings.tokens_file or ""),
                   dashboard_url=dashboard_url(gateway_url, room, host_token),
                   viewer_url=f"{gateway_url}/live/{room}", started_at=time.time())


def dashboard_url(gateway_url: str, room: str, host_token: str) -> str:
    """The dashboard with the host token in the fragment: the browser never sends a
    fragment to the server, so the token stays out of logs and the Referer header."""
    return f"{gateway_url}/dashboard/{room}#token={host_token}"


def find_system(settings: Settings, *, gateway_url: str | None = None, need_gateway: bool = False,
                need_redis: bool = False) -> System:
    """The settings, with what they leave blank taken from a running `up`'s state file.

    Explicit settings always win; the state file only fills gaps. Raises NoSystem when
    something needed is neither set nor found."""
    gateway = (gateway_url or "").rstrip("/")
    missing_gateway = need_gateway and (not gateway or settings.tokens_file is None)
    missing_redis = need_redis and not settings.redis_url
    if not missing_gateway and not missing_redis:
        return System(settings=settings, gateway_url=gateway, origin="from the settings")
    path = state_path(settings)
    state = read_state(path)
    if state is None:
        wanted = " and ".join(
            [w for w, m in (("--gateway and LIVECOMMERCE_TOKENS_FILE", missing_gateway),
                            ("LIVECOMMERCE_REDIS_URL", missing_redis)) if m])
        raise NoSystem(f"no running system found ({path} absent or its `up` has exited): "
                       f"start `livecommerce up` in this directory, or set {wanted}")
    filled = msgspec.structs.replace(
        settings,
        redis_url=settings.redis_url or state.redis_url,
        kafka_url=settings.kafka_url or state.kafka_url,
        tokens_file=settings.tokens_file or (Path(state.tokens_file) if state.tokens_file
                                             else None),
    )
    return System(settings=filled, gateway_url=gateway or state.gateway_url,
                  origin=f"`livecommerce up` pid {state.pid}, from {path}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
