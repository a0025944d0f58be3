"""The compiled engine is used only when it is fresh, and the tests run the one it says.

`make test` runs the engine's tests twice: compiled (when `make` built it) and with
LIVECOMMERCE_ENGINE=pure, the plain-Python fallback (Makefile, ENGINE_TESTS).
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest

import stream.engine
from stream.engine import native, viewers


def _manifest(build_dir: Path, **changes: object) -> None:
    built: dict[str, object] = {"abi": native.abi(), "sources": native.digests()}
    built.update(changes)
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / native.MANIFEST).write_text(json.dumps(built))


def test_a_fresh_build_is_put_in_front_of_the_sources(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    _manifest(tmp_path)
    path = ["/src/stream/engine"]
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert native.load(path, tmp_path) == "compiled"
    assert path == [str(tmp_path / "stream" / "engine"), "/src/stream/engine"]
    assert sys.path[-1] == str(tmp_path / "lib")


@pytest.mark.parametrize("why, changes", [
    ("its sources changed", {"sources": {**native.digests(), "engine/timers.py": "0" * 64}}),
    ("another Python", {"abi": ".cpython-310-x86_64-linux-gnu.so"}),
])
def test_a_stale_build_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     why: str, changes: dict[str, object]) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    _manifest(tmp_path, **changes)
    path = ["/src/stream/engine"]
    state = native.load(path, tmp_path)
    assert state.startswith("pure") and why in state
    assert path == ["/src/stream/engine"]


def test_no_build_or_the_switch_runs_pure(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    assert native.status(tmp_path / "none") == "pure (not built: make builds it)"
    _manifest(tmp_path)
    monkeypatch.setenv(native.ENV, "pure")
    assert native.status(tmp_path) == "pure (LIVECOMMERCE_ENGINE=pure)"


def test_every_source_of_the_build_is_in_its_digest() -> None:
    """A change of a model's field makes the build stale: compiled code trusts the types it
    was compiled against, and the engine imports stream.core."""
    sources = native.digests()
    assert {f"engine/{m}.py" for m in native.MODULES} <= sources.keys()
    assert "core/models.py" in sources


def test_no_compiled_module_defines_a_struct() -> None:
    """msgspec reads a Struct's annotations to decode it and to build its schema, and a
    compiled module's no longer resolve: /openapi.json failed on timeline's Product when
    timeline.py was compiled."""
    for name in native.MODULES:
        tree = ast.parse((native.SOURCE_DIR / f"{name}.py").read_text())
        structs = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                   and any(ast.unparse(base).endswith("Struct") for base in node.bases)]
        assert structs == [], f"{name} defines {structs}: leave it out of native.MODULES"


def test_the_engine_under_test_is_the_one_it_says() -> None:
    """This run's engine is what `stream.engine.ENGINE` says; and where a C compiler is,
    `make` built it, so only the switch runs it pure (a broken build fails here instead of
    passing every test on the fallback alone)."""
    state = stream.engine.ENGINE
    if state == "compiled":
        assert viewers.__file__ is not None
        assert viewers.__file__.endswith(".so")
        assert viewers.__file__.startswith(str(native.BUILD_DIR))
    else:
        assert viewers.__file__ is not None and viewers.__file__.endswith(".py")
        if shutil.which("cc") or shutil.which("gcc"):
            assert state == f"pure ({native.ENV}=pure)", (
                f"the viewer engine runs {state}: run `make` (or make test)")
