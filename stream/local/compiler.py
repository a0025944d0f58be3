"""Builds the compiled viewer engine (stream/engine/native.py says what and why).

    .venv/bin/python -m stream.local.compiler      # what `make` runs; about 25 s

mypyc and setuptools come with the dev requirements; a C compiler must be on PATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stream.engine import native


def build(build_dir: Path = native.BUILD_DIR) -> None:
    """Compile native.MODULES into `build_dir` (about 25 s on 2 cores), and write the
    manifest last, so a build that fails half-way is never loaded."""
    # The sources as they are now: one edited while it compiles leaves the build stale.
    built = {"abi": native.abi(), "sources": native.digests()}
    with tempfile.TemporaryDirectory() as tmp:
        # setuptools reads the configuration of its working directory, and this project's
        # pyproject.toml is for pip, not for this build: compile from a directory of its
        # own that sees the sources through a link.
        (Path(tmp) / "stream").symlink_to(native.SOURCE_DIR.parent, target_is_directory=True)
        sources = [f"stream/engine/{m}.py" for m in native.MODULES]
        script = (
            "import sys\n"
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            "setup(name='livecommerce-native', script_args=sys.argv[1:],\n"
            f"      ext_modules=mypycify({sources!r}, opt_level='3'))\n")
        lib = Path(tmp) / "out"
        subprocess.run([sys.executable, "-c", script, "build_ext", "--build-lib", str(lib),
                        "--build-temp", str(Path(tmp) / "temp")],
                       cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(build_dir, ignore_errors=True)  # an older build's libraries too
        (build_dir / "lib").mkdir(parents=True)
        (build_dir / "stream" / "engine").mkdir(parents=True)
        for so in lib.glob("*.so"):
            so.replace(build_dir / "lib" / so.name)
        for so in (lib / "stream" / "engine").glob("*.so"):
            so.replace(build_dir / "stream" / "engine" / so.name)
    (build_dir / native.MANIFEST).write_text(json.dumps(built))


def main() -> None:
    """`make`'s step: build, and say where."""
    build()
    print(f"compiled stream.engine's {', '.join(native.MODULES)} with mypyc into "
          f"{native.BUILD_DIR}")


__all__ = ["build", "main"]

if __name__ == "__main__":
    main()
