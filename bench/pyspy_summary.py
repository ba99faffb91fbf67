"""Where a Python process's CPU went, from a py-spy ``--format raw`` profile.

    .venv/bin/python bench/pyspy_summary.py PROFILE.txt

Each line of the profile is a stack (root first, frames ``function (file:line)`` joined by
``;``) and a sample count. Two views:

- **activities** (inclusive): the share of samples whose stack passes through a frame
  that names what the process was doing (kopf handling a watch event, kflow mirroring a
  status, a segment running, ...); they overlap;
- **libraries** (self): the share of samples whose innermost frame is in each library.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

__all__ = ["summarize"]

# (label, substring of a frame) — the first match, from the innermost frame outwards, wins
# only for the library view; every match counts for the activity view.
ACTIVITIES: list[tuple[str, str]] = [
    ("kopf: watch stream (read + JSON decode)", "kopf/_cogs/clients/watching.py"),
    ("kopf: processing an event (all of it)", "kopf/_core/reactor/processing.py"),
    ("kopf: its own PATCHes (progress, finalizer, diff-base)", "kopf/_cogs/clients/patching.py"),
    ("kflow handlers (create/event/delete)", "kflow/controller/handlers.py"),
    ("kflow: engine.start (adopt a new run)", "adopt (kflow/controller/adoption.py"),
    ("kflow: segments (engine.run_segment)", "run_segment (kflow/_engine/engine.py"),
    ("kflow: status mirror (flush: read run + PATCH)", "flush (kflow/controller/mirror.py"),
    ("kflow: status PATCH over httpx", "kflow/controller/kube.py"),
    ("httpx/httpcore (all)", "(httpx/"),
    ("kflow: build_status", "kflow/controller/status.py"),
    ("asyncpg (all)", "asyncpg/"),
    ("pydantic (all)", "pydantic"),
    ("logging", "logging/"),
]

LIBRARIES: list[tuple[str, str]] = [
    ("httpx/httpcore/h11 (kflow's KubeApi)", r"\((httpx|httpcore|h11)/"),
    ("aiohttp (kopf's client)", r"\((aiohttp|multidict|yarl)/"),
    ("kopf", r"\(kopf/"),
    ("asyncpg", r"\(asyncpg/"),
    ("pydantic", r"\(pydantic"),
    ("kflow", r"\(kflow/"),
    ("ssl", r"\(ssl\.py"),
    ("json", r"\(json/"),
    ("logging", r"\(logging/"),
    ("asyncio event loop", r"\(asyncio/"),
]


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def summarize(path: Path) -> str:
    samples: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((_frames(stack), int(count)))
    total = sum(n for _, n in samples) or 1
    activity: Counter[str] = Counter()
    library: Counter[str] = Counter()
    for frames, n in samples:
        joined = ";".join(frames)
        for label, marker in ACTIVITIES:
            if ":" in marker and "(" not in marker:
                file, func = marker.split(":")
                hit = any(f.startswith(func + " (") and file in f for f in frames)
            else:
                hit = marker in joined
            if hit:
                activity[label] += n
        leaf = frames[-1] if frames else ""
        lib = next((label for label, rx in LIBRARIES if re.search(rx, leaf)), "other")
        library[lib] += n
    lines = [f"py-spy: {total} samples of {path}", "", "activities (inclusive, overlapping):"]
    lines += [f"  {n / total:6.1%}  {label}" for label, n in activity.most_common()]
    lines += ["", "innermost frame by library (self):"]
    lines += [f"  {n / total:6.1%}  {label}" for label, n in library.most_common()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
