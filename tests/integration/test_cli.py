"""The two user-facing runs, as a user starts them: `demo --json` and `up` + Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from newcomer import READY, background, checkout

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "stream"]


def _env() -> dict[str, str]:
    """The user's environment without any of our settings: the embedded default."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIVECOMMERCE_")}


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C right after `up` is ready stops it cleanly, with every child. This used to
    time out under load: the worker, signalled while still joining its group, waited
    for the join before stopping (now it exits at once: it holds nothing to commit)."""
    view = checkout(tmp_path)
    with background([".venv/bin/livecommerce", "up"], cwd=view, env=_env()) as up:
        up.wait_for(READY)
        assert "gateway" in up.output and "platform" in up.output, up.output
        children = _descendants(up.proc.pid)
        names = {Path(f"/proc/{p}/comm").read_text().strip() for p in children if _alive(p)}
        assert any("tansu" in n for n in names) and any("valkey" in n for n in names), names
        assert len(children) >= 3  # broker, redis, a worker
        assert up.interrupt() == 0, up.output
    # Reaped children vanish at once; others are re-parented and may take a moment to die.
    deadline = time.monotonic() + 10
    while (left := [p for p in children if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"children left behind: {left}"


async def test_check_finds_broken_books(stack) -> None:  # type: ignore[no-untyped-def]
    from redis.asyncio import Redis

    from stream.core.models import StockSet
    from stream.store import keys
    from stream.store.inventory import Inventory

    room = f"check-{time.time_ns()}"
    redis = Redis.from_url(stack.redis_url)
    try:
        inventory = Inventory(redis)
        stock = StockSet(event_id=f"{room}-s", room_id=room, ts=1_700_000_000_000, sku="rice",
                         qty=5)
        await inventory.run(room, [inventory.op(stock)], ts=stock.ts)
        env = {**_env(), "LIVECOMMERCE_REDIS_URL": stack.redis_url}
        ok = subprocess.run([*CLI, "check", room], env=env, capture_output=True, text=True)
        assert ok.returncode == 0 and "oversold 0, ok" in ok.stdout, ok.stdout + ok.stderr
        await redis.hincrby(keys.stock_prefix(room) + "rice", "sold", 6)
        bad = subprocess.run([*CLI, "check", room], env=env, capture_output=True, text=True)
        assert bad.returncode == 1
        assert "oversold 1" in bad.stdout and "rice" in bad.stdout
    finally:
        await redis.aclose()
