"""The operator through a PostgreSQL restart, as after a crashed primary or a failover
(CloudNativePG's switch-over: the same Service address answers anew, every connection is
dropped, uncommitted work is gone). Runs in flight, asleep and waiting for an event all
finish; no completed step runs again, a step in flight at the crash at most once more.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from kflow.dev.postgres import LocalPostgres
from tests.e2e.conftest import Harness, wait_for
from tests.e2e.operator_env import Operator, Runs, lines


def test_runs_go_on_through_a_postgres_restart(
    harness: Harness, crds: None, namespace: str, runs: Runs, tmp_path: Path
) -> None:
    busy, rested, approved = (tmp_path / f"{n}.log" for n in ("busy", "rested", "approved"))
    with LocalPostgres() as own_pg:
        op = Operator(harness, namespace, own_pg.dsn, tmp_path)
        op.env["KFLOW_DB_TIMEOUT"] = "2"
        with op.running():
            runs.apply("busy", "steps", {"log": str(busy), "steps": 12, "delay": 0.3})
            runs.apply("rested", "sleeper", {"log": str(rested), "sleep_seconds": 4})
            runs.apply("approve", "approval", {"log": str(approved)})
            runs.wait_phase("approve", "Waiting")
            wait_for(lambda: len(lines(busy)) >= 3, timeout=30, what="busy's third step")
            recorded = {
                s["name"] for s in runs.status("busy")["steps"] if s["state"] == "completed"
            }
            crashed_at = time.monotonic()
            own_pg.restart("immediate")  # every connection dropped; WAL recovery
            runs.annotate("approve", "event.kflow.io/approved", '{"by": "ana"}')
            done = runs.wait_phase("busy", "Completed", timeout=90)
            recovered = time.monotonic() - crashed_at
            assert done["output"] == [f"work-{i}" for i in range(12)]
            assert runs.wait_phase("rested", "Completed", timeout=60)["output"] == "rested"
            assert runs.wait_phase("approve", "Completed", timeout=60)["output"] == "ana"
            assert op.healthy()  # it reconnected; nothing restarted it
    counts = Counter(lines(busy))
    assert set(counts) == {f"work-{i}" for i in range(12)}
    # A step recorded completed before the crash never ran again...
    keys = ["work", *(f"work#{i}" for i in range(2, 13))]
    for key, line in zip(keys, (f"work-{i}" for i in range(12)), strict=True):
        if key in recorded:
            assert counts[line] == 1, (line, counts)
    # ...and only the one in flight at the crash may have run twice (at-least-once).
    assert sum(n - 1 for n in counts.values()) <= 1, counts
    assert Counter(lines(rested)) == {"before": 1, "after": 1}  # the timer fired once
    assert lines(approved) == ["approved-by-ana"]  # the event consumed once
    print(f"recovered from the restart in {recovered:.1f} s")
