"""Rule hot reload inside a running worker (stream.worker.rulewatch), end to end.

A whole system (`stream.local.runner.running`) on a rules directory of the test's own.
A keyword tag rule gains a phrase while the worker runs: a viewer's comment before the
reload follows the old rule (no tag), the same comment after it follows the new one.
Then the file is broken: the worker refuses it with an error naming the file and the
field, says so in its log, and keeps the rules in force (the next viewer still tagged).

Keyword tags are decided the moment a comment is applied, with no timer and no grace,
so each viewer's outcome is exact; a second comment that tags under every version
marks when the viewer's first one has been applied.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest
from helpers import ev, read_all

from stream.core.config import Settings
from stream.core.models import TagChange
from stream.core.topics import Topics
from stream.local.runner import Running, running
from stream.worker.statusfile import WorkerStatus, path_for, read_status

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "rules"
ROOM = "reload-room"
OLD = 'phrases = ["多少钱", "优惠", "便宜"]'
NEW = 'phrases = ["多少钱", "优惠", "便宜", "划算"]'
BROKEN = "phrases = []"
PRICE = ("interest", "price")  # the rule whose phrases change
MARKER = ("household", "young_child")  # tags under every version


async def test_a_rule_edited_mid_show_applies_from_the_reload_and_a_broken_one_is_refused(
        settings: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    tags_file = rules / "tags.toml"
    assert tags_file.read_text(encoding="utf-8").count(OLD) == 1
    settings = msgspec.structs.replace(settings, rules_dir=rules,
                                       status_dir=tmp_path / "status")
    assert settings.status_dir is not None
    directory = settings.status_dir
    async with running(settings, workers=1, log_dir=tmp_path) as run, \
            aiohttp.ClientSession() as http:
        worker = run.workers[0]

        def status() -> WorkerStatus:
            return read_status(path_for(directory, worker.pid))

        async def until(ready: Callable[[WorkerStatus], bool], what: str) -> WorkerStatus:
            deadline = time.monotonic() + 60
            while True:
                path = path_for(directory, worker.pid)
                if path.exists() and ready(current := status()):
                    return current
                assert worker.poll() is None, f"the worker exited: {worker.returncode}"
                assert time.monotonic() < deadline, f"{what}: {status()}"
                await asyncio.sleep(0.2)

        first = await until(lambda s: bool(s.rules_digest and s.assigned), "no rules in force")
        await comment(http, run, "v-before")
        await tagged(run, "v-before")

        tags_file.write_text(tags_file.read_text(encoding="utf-8").replace(OLD, NEW),
                             encoding="utf-8")
        second = await until(lambda s: s.rules_digest != first.rules_digest, "no reload")
        assert second.rules_error is None
        await comment(http, run, "v-after")
        await tagged(run, "v-after")

        tags_file.write_text(tags_file.read_text(encoding="utf-8").replace(NEW, BROKEN),
                             encoding="utf-8")
        refused = await until(lambda s: s.rules_error is not None, "the broken file taken")
        assert refused.rules_digest == second.rules_digest, "the rules in force changed"
        error = refused.rules_error or ""
        assert "tags.toml" in error and "phrases" in error, error
        await comment(http, run, "v-broken")
        await tagged(run, "v-broken")
        assert b"rules refused" in (tmp_path / "worker-0.log").read_bytes()
        assert status().rules_digest == second.rules_digest

    keyword_tags = {viewer: held & {PRICE, MARKER}
                    for viewer, held in (await tags_by_viewer(run.settings)).items()}
    assert keyword_tags == {"v-before": {MARKER},  # the old rule: no price tag
                            "v-after": {MARKER, PRICE},  # the new rule
                            "v-broken": {MARKER, PRICE}}  # the new rule, kept


async def comment(http: aiohttp.ClientSession, run: Running, viewer: str) -> None:
    """The viewer joins and comments with the new phrase, then with the marker's."""
    at = int(time.time() * 1000)
    events = [ev("viewer.joined", room_id=ROOM, viewer_id=viewer, source="douyin", ts=at),
              ev("interaction.comment", room_id=ROOM, viewer_id=viewer, text="这个划算吗",
                 ts=at + 1),
              ev("interaction.comment", room_id=ROOM, viewer_id=viewer, text="宝宝能吃吗",
                 ts=at + 2)]
    token = run.tokens.for_role("platform")
    async with http.post(f"{run.gateway_url}/v1/events", json=events,
                         headers={"Authorization": f"Bearer {token}"}) as answer:
        assert answer.status == 202, await answer.text()


async def tagged(run: Running, viewer: str) -> None:
    """Wait for the viewer's marker tag: their comments before it have been applied."""
    deadline = time.monotonic() + 60
    while MARKER not in (await tags_by_viewer(run.settings)).get(viewer, set()):
        assert time.monotonic() < deadline, f"{viewer} never tagged {MARKER}"
        await asyncio.sleep(0.3)


async def tags_by_viewer(settings: Settings) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for _, _, _, value in await read_all(settings, [Topics(settings.topic_prefix).tags]):
        change = msgspec.json.decode(value, type=TagChange)
        if change.room_id == ROOM:
            held = out.setdefault(change.viewer_id, set())
            if change.op == "remove":
                held.discard((change.tag, change.value))
            else:
                held.add((change.tag, change.value))
    return out
