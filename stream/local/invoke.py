"""How the user types `livecommerce` from where they stand, for commands we print.

A printed command must run when pasted: `.venv/bin/livecommerce` from a checkout whose
venv is not activated (the README's path), `livecommerce` when that is what PATH finds,
else the absolute path of the entry point, else `python -m stream`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def command(*, cwd: Path | None = None) -> str:
    """The shell words that start `livecommerce` for a user in `cwd`."""
    here = (cwd or Path.cwd()).resolve()
    entry = Path(sys.prefix) / "bin" / "livecommerce"
    if not entry.exists():
        return f"{shlex.quote(sys.executable)} -m stream"
    entry = entry.absolute()
    # A venv under the working directory: the relative path is what the README shows.
    venv = Path(sys.prefix).resolve()
    if venv.is_relative_to(here):
        rel = os.path.relpath(venv / "bin" / "livecommerce", here)
        return shlex.quote(rel if "/" in rel else f"./{rel}")
    # `.venv` here may be a link to the venv that runs us (a second checkout sharing one).
    for name in (".venv", "venv"):
        if (here / name).is_dir() and (here / name).resolve() == venv:
            return f"{name}/bin/livecommerce"
    found = shutil.which("livecommerce")
    if found is not None and Path(found).resolve() == entry.resolve():
        return "livecommerce"
    return shlex.quote(str(entry))
