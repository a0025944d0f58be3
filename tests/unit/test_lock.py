"""The lock files pin every dependency pyproject.toml names: `make demo` and `make test`
install from them (`pip install --no-deps -e .` after), so a name missing there would
be missing on a fresh machine. `make lock` renews them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pinned(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_every_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main = {_name(r) for r in project["dependencies"] if "win32" not in r or "!=" in r}
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    assert main - set(_pinned(ROOT / "requirements/main.txt")) == set()
    assert (main | dev) - set(_pinned(ROOT / "requirements/dev.txt")) == set()


def test_both_locks_agree_on_shared_versions() -> None:
    main, dev = _pinned(ROOT / "requirements/main.txt"), _pinned(ROOT / "requirements/dev.txt")
    assert {k: (v, dev[k]) for k, v in main.items() if k in dev and dev[k] != v} == {}
