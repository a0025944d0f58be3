"""The browser client's own tests (tests/js, Node's test runner), run by pytest so that
`make test` runs them too. Without node they fail, unless LC_SKIP_NODE=1 says to skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_client_library_unit_tests_pass_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("LC_SKIP_NODE") == "1":
            pytest.skip("node is not installed and LC_SKIP_NODE=1")
        pytest.fail("node is needed for tests/js (install Node 20+, or set LC_SKIP_NODE=1)")
    tests = sorted(str(p) for p in (ROOT / "tests" / "js").glob("*.test.mjs"))
    assert tests, "no tests/js/*.test.mjs found"
    run = subprocess.run([node, "--test", *tests], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout
