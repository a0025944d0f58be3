"""README's command blocks, run as a reader runs them, against the embedded stack.

Blocks are marked in README.md: `<!-- readme-test: up -->` before a block started in
one terminal and left running (the test waits for its "Ctrl-C stops everything."),
`<!-- readme-test: run -->` before a block pasted into a second terminal (every line
must succeed). At the end of a section the test presses Ctrl-C (SIGINT to the process
group, as a terminal does) and expects a clean exit. The only edits are scale and
place: Locust's 500 users for 60 s become 20 for 6 s, port 8080 a free port, and
/tmp/lc-tokens.json a file of the test's own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from newcomer import READY, REPO, checkout, shell, user_env

pytestmark = pytest.mark.integration

MARK = re.compile(r"<!-- readme-test: (up|run) -->\n```sh\n(.*?)```", re.S)


def _blocks(section: str) -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [(kind, code) for kind, code in MARK.findall(body)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Ran = list[tuple[str, subprocess.CompletedProcess[str]]]


def _run_section(section: str, tmp_path: Path, edits: dict[str, str] | None = None,
                 while_up: Callable[[str, Ran], None] | None = None,
                 ) -> tuple[str, list[subprocess.CompletedProcess[str]]]:
    """Run a section's blocks in a fresh checkout; `up`'s output and each run's result.
    `while_up(output, ran)` runs after the blocks, before the Ctrl-C; `ran` pairs each
    run block, as edited, with its result."""
    blocks = _blocks(section)
    kinds = [kind for kind, _ in blocks]
    assert kinds[0] == "up" and "run" in kinds, f"{section}: marked blocks {kinds}"
    view = checkout(tmp_path)
    env = user_env()

    def edit(code: str) -> str:
        for old, new in (edits or {}).items():
            code = code.replace(old, new)
        return code

    up = subprocess.Popen(["bash", "-c", edit(blocks[0][1])], cwd=view, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if READY in line:
                break
        assert any(READY in line for line in lines), "".join(lines)
        ran = [(edit(code), shell(edit(code), cwd=view, env=env)) for kind, code in blocks[1:]
               if kind == "run"]
        results = [result for _, result in ran]
        for result in results:
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        if while_up is not None:
            while_up("".join(lines), ran)
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in the first terminal
        rest, _ = up.communicate(timeout=60)
        assert up.returncode == 0, "".join(lines) + rest
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert not (view / ".livecommerce" / "up.json").exists()
    return "".join(lines), results


def _value(output: str, label: str) -> str:
    return next(line.split(None, 1)[1].strip() for line in output.splitlines()
                if line.startswith(label))


def test_locust(tmp_path: Path) -> None:
    port = _free_port()
    _, (run,) = _run_section("Load testing with Locust", tmp_path, {
        "-u 500 -r 50 -t 60s": "-u 20 -r 10 -t 6s",
        "8080": str(port),
        "/tmp/lc-tokens.json": str(tmp_path / "lc-tokens.json"),
    })
    assert re.search(r"locust-room: \d+ skus, oversold 0, ok", run.stdout), run.stdout


def _typed(code: str) -> list[str]:
    """A block's command lines as a reader types them, without their comments."""
    return [line.split("  #", 1)[0].strip() for line in code.splitlines() if line.strip()]


def test_two_commands_and_the_hosts_view(tmp_path: Path) -> None:
    """The "Two commands" blocks, run as a reader runs them; then, with `up` still up, the
    dashboard's data is a full show, not an empty page. "The host's view" holds the same
    `up` and a subset of the same commands, checked here, so one show covers both (a
    second `up` and show cost ~35 s of the suite). And every command `up` prints
    (simulate, report, check) runs as printed from the checkout, in the order a user
    would: those a block holds word for word were run by the block, the others here."""
    mine, theirs = _blocks("Two commands"), _blocks("The host's view")
    ups = {_typed(code)[0] for kind, code in mine + theirs if kind == "up"}
    assert len(ups) == 1, f"the two sections start different systems: {ups}"
    ran_lines = {line for kind, code in mine if kind == "run" for line in _typed(code)}
    host_lines = {line for kind, code in theirs if kind == "run" for line in _typed(code)}
    assert host_lines <= ran_lines, f"The host's view runs more: {host_lines - ran_lines}"
    seen: dict[str, object] = {}
    view = tmp_path / "checkout"

    def dashboard_data(output: str, ran: Ran) -> None:
        page = _value(output, "dashboard")
        base, token = page.split("/dashboard/")[0], page.split("#token=", 1)[1]
        request = urllib.request.Request(f"{base}/v1/rooms/demo-room/metrics",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            seen.update(json.load(resp)["totals"])
        with urllib.request.urlopen(page.split("#")[0], timeout=10) as resp:
            assert resp.status == 200
        printed_commands_run_as_printed(output, ran)

    def printed_commands_run_as_printed(output: str, ran: Ran) -> None:
        state = json.loads((view / ".livecommerce" / "up.json").read_text())
        assert state["gateway_url"] == _value(output, "gateway")
        assert "#token=" in _value(output, "dashboard")
        done = {line: result for code, result in ran for line in _typed(code)}
        out: dict[str, subprocess.CompletedProcess[str]] = {}
        for label in ("simulate", "report", "check"):
            command = _value(output, label)
            assert command.startswith(".venv/bin/livecommerce "), (label, command)
            out[label] = done.get(command) or shell(command, cwd=view, env=user_env())
            assert out[label].returncode == 0, out[label].stdout + out[label].stderr
        show = out["simulate"]
        assert state["gateway_url"] in show.stderr  # it says which system it talks to
        [summary] = [json.loads(line) for line in show.stdout.splitlines()
                     if line.startswith("{")]
        assert summary["events_sent"] == summary["events_accepted"] > 1000
        assert summary["events_processed"] == summary["events_sent"]
        assert summary["orders"] > 0 and summary["nudges"] > 0 and summary["oversold"] == 0
        assert "<svg" in (view / "report.html").read_text(encoding="utf-8")
        assert "oversold 0, ok" in out["check"].stdout, out["check"].stdout

    output, results = _run_section("Two commands", tmp_path, while_up=dashboard_data)
    summary = json.loads(results[0].stdout.splitlines()[0])
    assert summary["orders"] > 0 and summary["nudges"] > 0 and summary["oversold"] == 0
    assert "demo-room: 5 skus, oversold 0, ok" in results[0].stdout
    assert _value(output, "gateway") in results[0].stderr  # each command said which system
    assert seen["orders"] > 0 and seen["paid"] > 0 and seen["gmv"] > 0, seen  # type: ignore[operator]
    assert seen["nudges"] > 0, seen  # type: ignore[operator]
    assert (tmp_path / "checkout" / "report.html").exists()
