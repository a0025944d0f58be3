"""Rules as data (SPEC: Nudge rules): validation messages, `rules check`, hot reload.

Pure and fast: temporary copies of the shipped `rules/`, no broker, no Redis.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from stream.cli import main
from stream.engine.rules import DwellTrigger, EventCountTrigger, RuleError, Rules, load_dir
from stream.worker.rulewatch import RuleWatcher, load_rules

SHIPPED = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped rules, free to break."""
    target = tmp_path / "rules"
    shutil.copytree(SHIPPED, target)
    return target


def edit(directory: Path, name: str, old: str, new: str) -> Path:
    """Replace `old` (which must be there exactly once) in one rule file."""
    file = directory / name
    text = file.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} not exactly once in {name}"
    file.write_text(text.replace(old, new), encoding="utf-8")
    return file


def refused(directory: Path) -> str:
    with pytest.raises(RuleError) as info:
        load_dir(directory)
    return str(info.value)


# --- the shipped rules ---------------------------------------------------------------

def test_shipped_rules_load() -> None:
    rules = load_dir(SHIPPED)
    assert [r.id for r in rules.nudges] == ["dwell-3min", "cart-unpaid-5min",
                                            "cart-unpaid-offair"]
    dwell = rules.nudges[0]
    assert isinstance(dwell.trigger, DwellTrigger) and dwell.trigger.seconds == 180
    assert dwell.holdout == pytest.approx(0.1)
    offair = rules.nudges[2]
    assert offair.quiet_hours is not None and offair.quiet_hours.start == "22:00"
    assert not offair.exit.broadcast_ended
    assert [b.value for b in rules.tags.watch_depth] == ["<5min", "5-15min", ">15min"]
    assert {k.id for k in rules.tags.keyword} >= {"young-child", "small-household"}
    assert [f.segment for f in rules.followups] == ["ordered", "cart_unpaid", "watched_only"]
    assert len(rules.digest) == 12
    assert load_rules(SHIPPED) == rules


def test_digest_tells_versions_apart(rules_dir: Path) -> None:
    before = load_dir(rules_dir).digest
    edit(rules_dir, "nudges.toml", "seconds = 180\n", "seconds = 240\n")
    assert load_dir(rules_dir).digest != before


# --- each kind of error names file, rule and field ----------------------------------

# (file, old text, new text, rule named, field named)
ERRORS = {
    "wrong type": ("nudges.toml", "cooldown_s = 0", 'cooldown_s = "0"',
                   "'dwell-3min'", "nudge[0].cooldown_s"),
    "unknown trigger kind": ("nudges.toml", 'kind = "dwell"', 'kind = "stare"',
                             "'dwell-3min'", "nudge[0].trigger.kind"),
    "bad quiet-hours clock": ("nudges.toml", 'start = "22:00"', 'start = "24:00"',
                              "'cart-unpaid-offair'", "nudge[2].quiet_hours.start"),
    "quiet hours start == end": ("nudges.toml", 'end = "08:00"', 'end = "22:00"',
                                 "'cart-unpaid-offair'", "nudge[2].quiet_hours"),
    "holdout > 1": ("nudges.toml", "cap_per_broadcast = 1\ncooldown_s = 0\nholdout = 0.1",
                    "cap_per_broadcast = 1\ncooldown_s = 0\nholdout = 1.5",
                    "'dwell-3min'", "nudge[0].holdout"),
    "duplicate rule id": ("nudges.toml", 'id = "cart-unpaid-offair"', 'id = "dwell-3min"',
                          "'dwell-3min'", "nudge[2].id"),
    "unknown field": ("nudges.toml", "cap_per_broadcast = 1\ncooldown_s = 0",
                      "cap_per_broadcast = 1\ncooldown = 0", "'dwell-3min'", "`cooldown`"),
    "unknown field in trigger": ("nudges.toml", "seconds = 180\n", "seconds = 180\nsecs = 1\n",
                                 "'dwell-3min'", "`secs`"),
    "missing field": ("nudges.toml", "kind = \"dwell\"\nseconds = 180", 'kind = "dwell"',
                      "'dwell-3min'", "`seconds`"),
    "unknown placeholder": ("nudges.toml", "{product_name}】，现在", "{produkt}】，现在",
                            "'dwell-3min'", "{produkt}"),
    "stray brace in message": ("nudges.toml", "{product_name}】，现在", "{product_name}】，{现在",
                               "'dwell-3min'", "nudge[0]"),
    "bad TOML syntax": ("nudges.toml", "seconds = 180\n", "seconds = \n",
                        "'dwell-3min'", "seconds"),
    "bad id": ("nudges.toml", 'id = "dwell-3min"', 'id = "Dwell 3min"',
               "'Dwell 3min'", "nudge[0].id"),
    "low stock above 100": ("nudges.toml", "at_most = 10", "at_most = 101",
                            "'cart-unpaid-5min'", "nudge[1].low_stock.at_most"),
    "low stock with neither": ("nudges.toml", "\nmessage = \"手慢无", "\n# message = \"",
                               "'cart-unpaid-5min'", "nudge[1].low_stock: message: missing"),
    "low stock message and exit": ("nudges.toml", "at_most = 10\n", "at_most = 10\nexit = true\n",
                                   "'cart-unpaid-5min'", "nudge[1].low_stock: exit"),
    "low stock placeholder": ("nudges.toml", "只剩最后 {remaining}", "只剩最后 {left}",
                              "'cart-unpaid-5min'", "nudge[1].low_stock: message"),
    "buckets out of order": ("tags.toml", "below_s = 900", "below_s = 200",
                             "'5-15min'", "watch_depth[1].below_s"),
    "last bucket not open": ("tags.toml", '[[watch_depth]]\nvalue = ">15min"\n', "",
                             "'5-15min'", "watch_depth[1].below_s"),
    "empty keyword phrases": ("tags.toml", 'phrases = ["小包装", "一个人吃", "两个人吃"]',
                              "phrases = []", "'small-household'", "keyword[1].phrases"),
    "empty keyword phrase": ("tags.toml", 'phrases = ["小包装", "一个人吃", "两个人吃"]',
                             'phrases = ["小包装", ""]', "'small-household'",
                             "keyword[1].phrases[1]"),
    "duplicate keyword id": ("tags.toml", 'id = "price-sensitive"', 'id = "young-child"',
                             "'young-child'", "keyword[2].id"),
    "unknown follow-up segment": ("followups.toml", 'segment = "watched_only"',
                                  'segment = "lurker"', "followup[2]", "segment"),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_error_names_file_rule_and_field(rules_dir: Path,
                                         case: tuple[str, str, str, str, str]) -> None:
    name, old, new, rule, field = case
    edit(rules_dir, name, old, new)
    message = refused(rules_dir)
    assert message.startswith(f"{rules_dir / name}: "), message
    assert rule in message and field in message, message


def test_unknown_top_level_table(rules_dir: Path) -> None:
    file = rules_dir / "nudges.toml"
    file.write_text(file.read_text(encoding="utf-8") + "\n[extras]\nfoo = 1\n",
                    encoding="utf-8")
    message = refused(rules_dir)
    assert message.startswith(f"{file}: top level: ")
    assert "`extras`" in message and "nudge" in message  # what it found, what it knows


def test_event_count_needs_a_known_event_type(rules_dir: Path) -> None:
    edit(rules_dir, "nudges.toml", 'kind = "dwell"\nseconds = 180',
         'kind = "event_count"\nevent = "likes"\ncount = 5\nwindow_s = 60')
    message = refused(rules_dir)
    assert "'dwell-3min'" in message and "nudge[0].trigger" in message and "'likes'" in message
    edit(rules_dir, "nudges.toml", 'event = "likes"', 'event = "interaction.like"')
    trigger = load_dir(rules_dir).nudges[0].trigger
    assert isinstance(trigger, EventCountTrigger) and trigger.event == "interaction.like"


def test_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="rules directory not found"):
        load_rules(tmp_path / "nope")
    with pytest.raises(RuleError, match="no rule files"):
        load_rules(tmp_path)


# --- livecommerce rules check --------------------------------------------------------

def test_rules_check_ok(rules_dir: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "check", str(rules_dir)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{rules_dir / 'nudges.toml'}: 3 nudge rules (dwell-3min v1, ")
    assert any(line.startswith(f"{rules_dir / 'tags.toml'}: ") for line in lines)
    assert any(line.startswith(f"{rules_dir / 'followups.toml'}: 3 follow-ups") for line in lines)
    assert lines[-1] == f"ok (digest {load_dir(rules_dir).digest})"


def test_rules_check_defaults_to_settings_dir(rules_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVECOMMERCE_RULES_DIR", str(rules_dir))
    result = CliRunner().invoke(main, ["rules", "check"])
    assert result.exit_code == 0, result.output
    assert str(rules_dir / "nudges.toml") in result.stdout


def test_rules_check_refuses_a_bad_file(rules_dir: Path) -> None:
    edit(rules_dir, "nudges.toml", "holdout = 0.1\n[nudge.trigger]\nkind = \"dwell\"",
         "holdout = 2\n[nudge.trigger]\nkind = \"dwell\"")
    result = CliRunner().invoke(main, ["rules", "check", str(rules_dir)])
    assert result.exit_code == 1
    assert "ok" not in result.stdout
    assert str(rules_dir / "nudges.toml") in result.stderr
    assert "'dwell-3min'" in result.stderr and "nudge[0].holdout" in result.stderr


def test_rules_check_missing_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "check", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "rules directory not found" in result.stderr


def test_rules_check_warns_about_a_misnamed_file(rules_dir: Path) -> None:
    (rules_dir / "nudge.toml").write_text("", encoding="utf-8")
    result = CliRunner().invoke(main, ["rules", "check", str(rules_dir)])
    assert result.exit_code == 0
    assert "nudge.toml: ignored" in result.stderr


# --- hot reload ----------------------------------------------------------------------

def _reloads(outcome: str) -> float:
    return REGISTRY.get_sample_value("lc_rule_reloads_total", {"outcome": outcome}) or 0.0


def test_watcher_refuses_to_start_on_bad_rules(rules_dir: Path) -> None:
    edit(rules_dir, "nudges.toml", 'kind = "dwell"', 'kind = "stare"')
    with pytest.raises(RuleError, match=re.escape("nudge[0].trigger.kind")):
        RuleWatcher(rules_dir)
    with pytest.raises(RuleError, match="not found"):
        RuleWatcher(rules_dir / "nope")


def test_watcher_sees_a_same_size_edit_that_keeps_the_mtime(rules_dir: Path) -> None:
    """Like `cp -p` or `rsync -t`: size and mtime unchanged, content different."""
    watcher = RuleWatcher(rules_dir)
    file = rules_dir / "nudges.toml"
    st = file.stat()
    edit(rules_dir, "nudges.toml", "seconds = 180\n", "seconds = 240\n")
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file.stat().st_size == st.st_size
    assert not watcher.poll()  # the change is seen; the load waits for the writer to finish
    assert watcher.poll()
    assert watcher.current.nudges[0].trigger.seconds == 240  # type: ignore[union-attr]


async def test_watcher_reloads_refuses_and_recovers(rules_dir: Path) -> None:
    watcher = RuleWatcher(rules_dir)
    first = watcher.current
    seen: list[Rules] = []

    def broken(_: Rules) -> None:
        raise RuntimeError("a subscriber bug must not stop the others")

    watcher.on_change(broken)
    watcher.on_change(seen.append)
    task = asyncio.create_task(watcher.run(every_s=0.2))

    async def until(condition: Callable[[], bool], what: str) -> float:
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < 5, f"not within 5 s: {what}"
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    try:
        # A good edit is in force within 5 s, and subscribers hear of it.
        edit(rules_dir, "nudges.toml", "seconds = 180\n", "seconds = 240\n")
        await until(lambda: watcher.current.digest != first.digest, "good edit")
        good = watcher.current
        assert good.nudges[0].trigger.seconds == 240  # type: ignore[union-attr]
        assert seen == [good] and watcher.last_error is None

        # A broken edit is refused; the good rules stay in force.
        refused_before = _reloads("refused")
        edit(rules_dir, "nudges.toml", 'start = "22:00"', 'start = "22h"')
        await until(lambda: watcher.last_error is not None, "broken edit refused")
        assert watcher.current is good and seen == [good]
        error = watcher.last_error or ""
        assert str(rules_dir / "nudges.toml") in error
        assert "'cart-unpaid-offair'" in error and "nudge[2].quiet_hours.start" in error
        assert _reloads("refused") == refused_before + 1

        # Touching the broken file does not make it try (and log) the same content again.
        os.utime(rules_dir / "nudges.toml")
        await asyncio.sleep(0.8)
        assert _reloads("refused") == refused_before + 1 and watcher.current is good

        # The fix is taken.
        ok_before = _reloads("ok")
        edit(rules_dir, "nudges.toml", 'start = "22h"', 'start = "21:30"')
        await until(lambda: watcher.last_error is None, "fixed edit")
        assert watcher.current.nudges[2].quiet_hours.start == "21:30"  # type: ignore[union-attr]
        assert seen == [good, watcher.current]
        assert _reloads("ok") == ok_before + 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

