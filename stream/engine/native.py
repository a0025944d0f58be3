"""The engine's hot modules compiled with mypyc, used when built and fresh.

The viewer engine is the largest part of the worker's main thread on the viewer path
(29-35% in session 19's profiles), and its code is typed strictly, so mypyc compiles it
unchanged. `bench/viewer_engine.py`, 3 alternating pairs of these modules in session 20:
25.8k, 26.1k and 26.6k events/s pure, 29.8k, 29.6k and 28.2k compiled (+13% at the
median; docs/performance.md, "Session 20").

The source stays the engine: the compiled modules are a cache of it, kept outside the
tree, beside the interpreter they were built for (`sys.prefix`, so `.venv/` in a
checkout). `load` puts them in front of the sources only when every source of
stream/engine and stream/core still hashes to what was compiled. An edited module, a
machine without a C compiler, or LIVECOMMERCE_ENGINE=pure runs the same code as plain
Python. `make` builds them (stream/local/compiler.py, about 25 s), and `make test` runs
the engine's tests both ways.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

# The modules `ViewerEngine.apply_all` runs through for each event. None may define a
# msgspec Struct: compiled, its annotations no longer resolve, and msgspec could not
# build its schema (the gateway's /openapi.json failed on timeline's Product). So not
# state.py or timeline.py, and not the modules only a rule load or a replay calls.
MODULES = ("viewers", "handlers", "timers", "watermark", "tags")

SOURCE_DIR = Path(__file__).resolve().parent
BUILD_DIR = Path(sys.prefix) / "livecommerce-native"
MANIFEST = "manifest.json"
ENV = "LIVECOMMERCE_ENGINE"  # "pure" turns the compiled modules off


def digests() -> dict[str, str]:
    """Every source the build type-checked against (the engine imports `stream.core`
    only): compiled code trusts the types it was compiled with, so a change of a field in
    stream/core/models.py makes the build stale too."""
    root = SOURCE_DIR.parent
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in ("engine", "core") for path in sorted((root / folder).glob("*.py"))}


def abi() -> str:
    """What a build must match of the interpreter: its extension modules' ABI tag
    (cpython-311-x86_64-linux-gnu; patch releases keep it, so a slim image can run what a
    full one built)."""
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def status(build_dir: Path = BUILD_DIR) -> str:
    """"compiled" when the built modules match every source, or why the engine runs pure."""
    if os.environ.get(ENV, "") == "pure":
        return f"pure ({ENV}=pure)"
    try:
        built = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return "pure (not built: make builds it)"
    if built.get("abi") != abi():
        return "pure (built for another Python: make builds it again)"
    if built.get("sources") != digests():
        return "pure (its sources changed since the build: make builds it again)"
    return "compiled"


def load(package_path: list[str], build_dir: Path = BUILD_DIR) -> str:
    """Called by the package's `__init__` with its `__path__`: put the compiled modules in
    front of the sources when they are fresh. Returns `status`."""
    state = status(build_dir)
    if state == "compiled":
        # mypyc's shared library is a top-level module; the per-module shims import it.
        sys.path.append(str(build_dir / "lib"))
        package_path.insert(0, str(build_dir / "stream" / "engine"))
    return state


__all__ = ["BUILD_DIR", "ENV", "MANIFEST", "MODULES", "abi", "digests", "load", "status"]
