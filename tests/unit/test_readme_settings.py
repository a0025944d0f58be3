"""README's settings table lists every `LIVECOMMERCE_*` setting `Settings` reads, and no
other: a setting added without a row (or a row left after a setting went) fails here."""

from __future__ import annotations

import re
from pathlib import Path

from stream.core.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_variables() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(LIVECOMMERCE_[A-Z0-9_]+)` \|", section, flags=re.M))


def test_settings_table_matches_settings() -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}
    rows = _table_variables()
    assert not fields - rows, f"settings missing from README's table: {sorted(fields - rows)}"
    assert not rows - fields, f"README rows with no setting: {sorted(rows - fields)}"
