"""The state file that lets commands find a running `up`, how printed commands start
`livecommerce`, the one-line errors, and the worker's status lines. No server needed."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import redis.exceptions
from faust.types import TP

from stream.core.config import Settings, from_env
from stream.local import invoke
from stream.local.errors import NoSuchRoom, one_line
from stream.local.state import (
    DEFAULT_STATE,
    NoSystem,
    UpState,
    find_system,
    published,
    read_state,
    state_path,
)
from stream.worker.status import Status, describe


def _state(pid: int, **fields: str) -> UpState:
    return UpState(pid=pid, gateway_url=fields.get("gateway_url", "http://127.0.0.1:9"),
                   kafka_url="kafka://127.0.0.1:8", redis_url="redis://127.0.0.1:7/0",
                   tokens_file="/tmp/tokens.json")


def test_state_path_from_env(tmp_path: Path) -> None:
    assert state_path(Settings()) == DEFAULT_STATE
    where = tmp_path / "s.json"
    assert state_path(from_env({"LIVECOMMERCE_STATE": str(where)})) == where


def test_published_writes_then_removes(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "up.json"
    state = _state(os.getpid())
    with published(path, state):
        assert read_state(path) == state
    assert not path.exists()


def test_published_leaves_a_newer_owner_alone(tmp_path: Path) -> None:
    """A second `up` in the same directory took the file over: the first leaves it."""
    path = tmp_path / "up.json"
    with published(path, _state(os.getpid())):
        other = _state(os.getppid())
        path.write_bytes(msgspec.json.encode(other))
    assert read_state(path) == other


def test_a_dead_up_is_no_system(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = tmp_path / "up.json"
    path.write_bytes(msgspec.json.encode(_state(gone.pid)))
    assert read_state(path) is None
    with pytest.raises(NoSystem, match="start `livecommerce up`"):
        find_system(Settings(state=path), need_redis=True)


def test_unreadable_state_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    path.write_text("{not json")
    with pytest.raises(NoSystem, match="delete it"):
        read_state(path)


def test_find_system_fills_only_gaps(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    with published(path, _state(os.getpid())):
        found = find_system(Settings(state=path), need_gateway=True, need_redis=True)
        assert found.gateway_url == "http://127.0.0.1:9"
        assert found.settings.redis_url == "redis://127.0.0.1:7/0"
        assert found.settings.tokens_file == Path("/tmp/tokens.json")
        assert str(path) in found.describe() and "http://127.0.0.1:9" in found.describe()
        # Explicit settings win over the state file.
        mine = find_system(Settings(state=path, redis_url="redis://elsewhere:1/0"),
                           need_redis=True)
        assert mine.settings.redis_url == "redis://elsewhere:1/0"
        assert "from the settings" in mine.describe()
        flag = find_system(Settings(state=path), gateway_url="http://gw:1/",
                           need_gateway=True)
        assert flag.gateway_url == "http://gw:1"
        assert flag.settings.tokens_file == Path("/tmp/tokens.json")


def test_no_state_names_the_setting_to_set(tmp_path: Path) -> None:
    with pytest.raises(NoSystem, match="LIVECOMMERCE_REDIS_URL"):
        find_system(Settings(state=tmp_path / "none.json"), need_redis=True)
    with pytest.raises(NoSystem, match="--gateway and LIVECOMMERCE_TOKENS_FILE"):
        find_system(Settings(state=tmp_path / "none.json"), need_gateway=True)


def test_command_is_the_venv_path_from_its_checkout(tmp_path: Path) -> None:
    """From the directory holding the venv: a relative path; elsewhere: one that works."""
    venv_parent = Path(sys.prefix).resolve().parent
    cmd = invoke.command(cwd=venv_parent)
    assert cmd == f"{Path(sys.prefix).resolve().name}/bin/livecommerce"
    elsewhere = invoke.command(cwd=tmp_path)
    run = subprocess.run(f"{elsewhere} --version", shell=True, cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0 and "livecommerce" in run.stdout, run.stderr


@pytest.mark.parametrize(("exc", "words"), [
    (redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1."),
     ["Redis", "127.0.0.1:1", "livecommerce up"]),
    (OSError(errno.EADDRINUSE, "error while attempting to bind on address "
             "('127.0.0.1', 8080): address already in use"), ["port 8080", "--http-port"]),
    (FileNotFoundError(errno.ENOENT, "No such file", "/x/tokens.json"), ["/x/tokens.json"]),
    (NoSuchRoom("typo-room", ["demo-room"]), ["no such room", "typo-room", "demo-room"]),
])
def test_known_failures_are_one_line(exc: BaseException, words: list[str]) -> None:
    line = one_line(exc)
    assert line is not None and "\n" not in line
    for word in words:
        assert word in line


def test_unknown_failures_keep_their_traceback() -> None:
    assert one_line(KeyError("bug")) is None


def test_partitions_described_as_ranges() -> None:
    tps = [TP("lc.viewer-events", p) for p in (0, 1, 2, 3, 6)] + [TP("lc.host-events", 5)]
    assert describe(tps) == "lc.host-events 5; lc.viewer-events 0-3,6"
    assert describe([]) == "none"


def test_status_lines(caplog: pytest.LogCaptureFixture) -> None:
    events, now = [0], [100.0]
    status = Status(group="g", events=lambda: events[0], retries=lambda: 2,
                    clock=lambda: now[0])
    logger = logging.getLogger("stream.worker.status")
    if not logger.propagate:  # a worker's own handler is attached in this process
        logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="stream.worker.status"):
            status.assigned({TP("t", 0), TP("t", 1)})
            status.assigned({TP("t", 1), TP("t", 2)})
            events[0], now[0] = 750, 115.0
            status.progress({TP("t", 1): 3, TP("t", 2): None})
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "joined group g: holding 2 partitions: t 0-1"
    assert lines[1] == "joined group g: holding 2 partitions: t 1-2 (gained t 2; gave up t 0)"
    assert lines[2] == ("processed 750 events in 15 s (750 in all); lag 3 records over 2 "
                        "partitions; 2 retries")


def test_version_and_help_texts() -> None:
    from click.testing import CliRunner

    from stream.cli import main

    runner = CliRunner()
    version = runner.invoke(main, ["--version"], prog_name="livecommerce")
    assert version.exit_code == 0 and version.output.startswith("livecommerce ")
    for command, option, words in (("demo", "--http-port", "Gateway port"),
                                   ("demo", "--keep", "until Ctrl-C"),
                                   ("up", "--workers", "Worker processes"),
                                   ("gateway", "--port", "Port to listen on"),
                                   ("simulate", "--gateway", "livecommerce up")):
        text = runner.invoke(main, [command, "--help"]).output
        line = " ".join(text.split())
        assert option in line and words in line, (command, text)
