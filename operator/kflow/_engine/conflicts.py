"""When a start names an existing run (by id or idempotency key) but asks for another one.

`Engine.start` returns the existing run for the same request (the same workflow, version
and input) and refuses any other with `RunConflict`, as Temporal's conflict policy does:
an id names one run, and silently returning another is what a caller would call surprising.
"""

from __future__ import annotations

from typing import Any

from kflow._errors import RunConflict
from kflow._models import RunRecord

__all__ = ["conflict"]


def conflict(
    run: RunRecord, workflow: str, version: int | None, encoded: Any
) -> RunConflict | None:
    """The conflict of a start with the run that has its id or key, or None when it asks
    for that very run (a version left to the registry matches whatever version the run
    was bound to)."""
    differ = [
        what
        for what, same in (
            ("workflow", run.workflow_name == workflow),
            ("version", version is None or run.workflow_version in (None, version)),
            ("input", run.input == encoded),
        )
        if not same
    ]
    if not differ:
        return None
    key = f" (idempotency key {run.idempotency_key!r})" if run.idempotency_key else ""
    return RunConflict(
        f"run {run.run_id}{key} exists with another {' and '.join(differ)} (workflow "
        f"{run.workflow_name!r} v{run.workflow_version}): a run id or idempotency key names "
        "one run; start another run under a new one",
        run,
    )
