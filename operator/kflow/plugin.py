"""``kubectl kflow``: the kubectl plugin for WorkflowRuns (being written; see issue 7)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    print("kubectl kflow: not available yet", file=sys.stderr)
    return 1
