"""What `livecommerce rules check` says of a rules directory: a line per known file (what it
holds, or that it is absent and defaults apply), and a warning per stray `*.toml`."""

from __future__ import annotations

from pathlib import Path

from stream.engine.rules import FILES, Rules


def rule_lines(path: Path, loaded: Rules) -> tuple[list[str], list[str]]:
    """(lines for stdout, warnings for stderr) describing `loaded`, read from `path`."""
    out: list[str] = []
    warnings: list[str] = []
    for name in FILES:
        file = path / name
        if not file.is_file():
            out.append(f"{file}: absent, defaults")
        elif name == "nudges.toml":
            rules_ = ", ".join(f"{r.id} v{r.version}" + ("" if r.enabled else " disabled")
                               for r in loaded.nudges)
            out.append(f"{file}: {_count(len(loaded.nudges), 'nudge rule')} ({rules_}), "
                       f"at most {loaded.limits.per_viewer_per_hour} per viewer per hour")
        elif name == "tags.toml":
            tags = loaded.tags
            buckets = " | ".join(b.value for b in tags.watch_depth)
            keywords = ", ".join(k.id for k in tags.keyword)
            out.append(f"{file}: watch depth {buckets}; "
                       f"{_count(len(tags.keyword), 'keyword rule')} ({keywords}); "
                       f"{_count(len(tags.private_sources), 'private source')}")
        elif name == "followups.toml":
            follow = ", ".join(f"{f.segment} +{f.after_s}s" for f in loaded.followups)
            out.append(f"{file}: {_count(len(loaded.followups), 'follow-up')} ({follow})")
    # load_dir reads only the known names; a misnamed file would be silently ignored.
    for stray in sorted(p.name for p in path.glob("*.toml") if p.name not in FILES):
        warnings.append(f"warning: {path / stray}: ignored (known files: {', '.join(FILES)})")
    return out, warnings


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
