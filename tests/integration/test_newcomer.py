"""A newcomer's path on the command line: each known failure is one line and a non-zero
exit. That every command `up` prints runs as printed from where the user stands is
tests/scenarios/test_readme.py::test_the_hosts_view (the same `up` and show as the
README's block, run once)."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from newcomer import checkout, shell, user_env

from stream.local.embedded import EmbeddedStack

pytestmark = pytest.mark.integration

LC = shlex.quote(str(Path(sys.prefix) / "bin" / "livecommerce"))


def _one_error(run: subprocess.CompletedProcess[str], *words: str) -> str:
    """The run failed with exactly one `error:` line and no traceback; that line."""
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _dead_port() -> int:
    """A port nothing listens on (bound, then released; a race here only makes the
    test stricter: something answering would fail it loudly)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_gateway_is_one_line_within_ten_seconds(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": {"p": "platform", "c": "commerce", "h": "host"}}')
    env = user_env(LIVECOMMERCE_TOKENS_FILE=str(tokens))
    started = time.monotonic()
    run = shell(f"{LC} simulate --gateway http://127.0.0.1:{_dead_port()} "
                "--duration 5 --viewers 10", cwd=tmp_path, env=env, timeout_s=60)
    took = time.monotonic() - started
    _one_error(run, "gateway", "not answering", "--gateway")
    assert took < 10, f"{took:.1f} s to give up"


def test_a_dead_redis_is_one_line(tmp_path: Path) -> None:
    # A refused connection is retried for LIVECOMMERCE_REDIS_CONNECT_TIMEOUT_S (a Redis
    # may be starting); 1 s keeps this test short (3 s made it 15 s: three commands).
    env = user_env(LIVECOMMERCE_REDIS_URL=f"redis://127.0.0.1:{_dead_port()}/0",
                   LIVECOMMERCE_REDIS_CONNECT_TIMEOUT_S="1")
    for command in (f"{LC} check", f"{LC} report demo-room --json"):
        _one_error(shell(command, cwd=tmp_path, env=env, timeout_s=60), "Redis")
    # --debug is the way to the traceback.
    debug = shell(f"{LC} --debug check", cwd=tmp_path, env=env, timeout_s=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_no_running_system_is_one_line(tmp_path: Path) -> None:
    for command in (f"{LC} check", f"{LC} report r --out r.html", f"{LC} simulate"):
        _one_error(shell(command, cwd=tmp_path, env=user_env(), timeout_s=60),
                   "livecommerce up")


def test_a_missing_tokens_file_is_one_line(tmp_path: Path) -> None:
    env = user_env(LIVECOMMERCE_TOKENS_FILE=str(tmp_path / "nope.json"))
    run = shell(f"{LC} simulate --gateway http://127.0.0.1:{_dead_port()}",
                cwd=tmp_path, env=env, timeout_s=60)
    _one_error(run, "nope.json")


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    view = checkout(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = shell(f".venv/bin/livecommerce up --http-port {port}", cwd=view,
                    env=user_env(), timeout_s=120)
    _one_error(run, f"port {port}", "--http-port")
    assert not (view / ".livecommerce" / "up.json").exists()


async def test_an_unknown_room_is_one_line(stack: EmbeddedStack, tmp_path: Path) -> None:
    env = user_env(LIVECOMMERCE_REDIS_URL=stack.redis_url)
    room = f"no-such-room-{time.time_ns()}"
    for command in (f"{LC} check {room}", f"{LC} report {room} --out r.html"):
        _one_error(shell(command, cwd=tmp_path, env=env, timeout_s=60), "no such room", room)
    assert not (tmp_path / "r.html").exists()
