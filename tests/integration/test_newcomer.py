"""A newcomer's path on the command line: each known failure is one line and a non-zero
exit, and every command `up` prints runs as printed from where the user stands."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from newcomer import READY, background, checkout, shell, user_env

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
    # may be starting); 3 s keeps this test short.
    env = user_env(LIVECOMMERCE_REDIS_URL=f"redis://127.0.0.1:{_dead_port()}/0",
                   LIVECOMMERCE_REDIS_CONNECT_TIMEOUT_S="3")
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


def test_printed_commands_run_as_printed(tmp_path: Path) -> None:
    """`up` in a checkout; every command it prints, pasted into bash there, works."""
    view = checkout(tmp_path)
    env = user_env()
    with background([".venv/bin/livecommerce", "up"], cwd=view, env=env) as up:
        up.wait_for(READY)
        state = json.loads((view / ".livecommerce" / "up.json").read_text())
        assert state["gateway_url"] == up.value("gateway")
        commands = {label: up.value(label) for label in ("simulate", "report", "check")}
        for label, command in commands.items():
            assert command.startswith(".venv/bin/livecommerce "), (label, command)
        # In the order a user would: the show first, then its review and its books.
        show = shell(commands["simulate"], cwd=view, env=env)
        assert show.returncode == 0, show.stdout + show.stderr
        assert state["gateway_url"] in show.stderr  # it says which system it talks to
        summary = json.loads(show.stdout.strip().splitlines()[-1])
        assert summary["events_sent"] == summary["events_accepted"] > 1000
        assert summary["events_processed"] == summary["events_sent"]
        assert summary["orders"] > 0 and summary["nudges"] > 0 and summary["oversold"] == 0
        report = shell(commands["report"], cwd=view, env=env)
        assert report.returncode == 0, report.stderr
        assert "<svg" in (view / "report.html").read_text()
        check = shell(commands["check"], cwd=view, env=env)
        assert check.returncode == 0 and "oversold 0, ok" in check.stdout, check.stderr
        page = up.value("dashboard")
        assert "#token=" in page
        with urllib.request.urlopen(page.split("#")[0], timeout=10) as resp:
            assert resp.status == 200
        assert up.interrupt() == 0, up.output
    assert not (view / ".livecommerce" / "up.json").exists()
