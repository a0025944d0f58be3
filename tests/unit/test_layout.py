"""The house, read from the imports: folders by role, imports one way, a pure engine.

Parses every module of `stream/` with `ast` (no import runs), so the layout cannot rot:
a module cycle (TYPE_CHECKING imports count), two folders importing each other, an
import against the folders' order, an I/O library in `engine/`, or a module far past
500 lines fails here.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "stream"
# Imports run left to right only: a folder may import the folders before it, never after.
ORDER = ("core", "engine", "store", "worker", "hostview", "gateway", "local")
# worker and hostview sit side by side on the store: neither may import the other.
SIDE_BY_SIDE = {frozenset({"worker", "hostview"})}
IO = {"redis", "aiohttp", "aiokafka", "faust", "mode", "socket", "subprocess", "urllib"}
# What each folder may import from outside the standard library and `stream`: the rule of
# its room. core: no I/O at all; engine: pure; the store is the only one holding Redis.
FORBIDDEN = {
    "core": IO,
    "engine": IO,
    "store": IO - {"redis"},
    "hostview": {"aiokafka", "faust", "mode"},
}
# Pure functions of an I/O library, allowed where the library itself is not: Kafka's
# default partitioner (murmur2) decides a viewer's partition in core, with no socket;
# urllib.parse reads a URL.
PURE_PARTS = {"aiokafka.partitioner", "urllib.parse"}
MAX_LINES = 520


def modules() -> dict[str, Path]:
    found = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports_of(name: str, path: Path) -> Iterator[str]:
    """Every module name this file imports, TYPE_CHECKING blocks and functions included."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                module = ".".join([*parts[: len(parts) - node.level + 1], node.module or ""])
            else:
                module = node.module or ""
            module = module.strip(".")
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def folder_of(name: str) -> str | None:
    """`stream.store.keys` and the package `stream.store` itself are both in `store`."""
    parts = name.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in ORDER else None


MODULES = modules()
GRAPH = {
    name: {m for m in imports_of(name, path) if m in MODULES and m != name
           and not (path.name == "__init__.py" and m.startswith(name + "."))}
    for name, path in MODULES.items()
}


def test_no_module_imports_itself_back() -> None:
    """No cycle between modules: Tarjan's strongly connected components are all single."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_folders_import_one_way() -> None:
    wrong = []
    for name, deps in GRAPH.items():
        here = folder_of(name)
        for dep in deps:
            there = folder_of(dep)
            if here is None or there is None or here == there:
                continue
            if frozenset({here, there}) in SIDE_BY_SIDE or (
                    ORDER.index(there) > ORDER.index(here)):
                wrong.append(f"{name} imports {dep}")
    assert wrong == []


def test_top_level_modules_import_only_downwards() -> None:
    """`stream.cli` and the package's own files stand above every folder; no folder imports them."""
    wrong = [f"{name} imports {dep}" for name, deps in GRAPH.items() if folder_of(name)
             for dep in deps if folder_of(dep) is None and dep != "stream"]
    assert wrong == []


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_each_folder_keeps_its_rule_for_io(folder: str) -> None:
    wrong = []
    for name, path in MODULES.items():
        if folder_of(name) != folder:
            continue
        top = {m.split(".")[0] for m in imports_of(name, path)
               if not any(m == p or m.startswith(p + ".") for p in PURE_PARTS)}
        if top & FORBIDDEN[folder]:
            wrong.append(f"{name} imports {sorted(top & FORBIDDEN[folder])}")
    assert wrong == []


def test_lua_lives_only_in_the_store() -> None:
    """Redis scripts are registered in store/ only; the other rooms call the store."""
    wrong = [name for name, path in MODULES.items() if folder_of(name) != "store"
             and "register_script" in path.read_text(encoding="utf-8")]
    assert wrong == []


def test_modules_stay_small() -> None:
    big = {name: n for name, path in MODULES.items()
           if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


def test_every_folder_says_what_lives_there() -> None:
    """Each folder's `__init__.py` starts with a docstring naming what it holds."""
    bare = [path.parent.name for path in PKG.glob("*/__init__.py")
            if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert bare == []


def test_every_folder_names_each_of_its_modules() -> None:
    """A newcomer reads a folder's docstring to find a module: each is named there in
    backticks (47 of the 105 modules were not, before this test)."""
    unnamed = {}
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        missing = sorted(p.stem for p in init.parent.glob("*.py")
                         if p.stem != "__init__" and f"`{p.stem}`" not in doc)
        if missing:
            unnamed[init.parent.name] = missing
    assert unnamed == {}


def test_the_checker_catches_what_it_is_for() -> None:
    """The graph is real: known one-way edges are seen, so an empty answer means something."""
    assert "stream.core.models" in GRAPH["stream.core.codec"]
    assert any(folder_of(d) == "store" for d in GRAPH["stream.worker.pipeline"])


def test_test_files_have_names_of_their_own() -> None:
    """tests/ has no packages: pytest imports each test file by its bare name, so two
    files of one name in two folders fail to collect (tests/unit/test_gaps.py beside an
    integration test_gaps.py did, in a full run only)."""
    tests = Path(__file__).resolve().parents[1]
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
