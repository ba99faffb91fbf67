"""Crash and resume: a segment killed with SIGKILL between steps and inside a step.

Each completed step's function must have run exactly once, the interrupted one at most
twice, and the run must finish after the dead executor's lease expires.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kflow import Engine, LeaseHeld, Registry, RunStatus
from tests.integration.crash_worker import COUNTS_TABLE, crashy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_worker(dsn: str, schema: str, run_id: object, crash_at: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.crash_worker", dsn, schema, str(run_id)],
        cwd=ROOT,
        env={**os.environ, "CRASH_AT": crash_at},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


@pytest.mark.parametrize(
    ("crash_at", "expected"),
    [
        ("between", {"a": 1, "b": 1, "c": 1, "d": 1}),
        ("inside", {"a": 1, "b": 1, "c": 2, "d": 1}),
    ],
)
async def test_killed_segment_resumes_and_steps_run_once(
    make_env, pg_dsn: str, crash_at: str, expected: dict[str, int]
) -> None:
    async with make_env(crashy) as env:
        schema = env.store.schema
        await env.store.pool.execute(
            f"CREATE TABLE {COUNTS_TABLE} (step text PRIMARY KEY, n int NOT NULL)"
        )
        run = await env.engine.start(crashy, [pg_dsn, schema])
        assert run_worker(pg_dsn, schema, run.run_id, crash_at) == -signal.SIGKILL

        after_crash = await env.run(run.run_id)
        assert after_crash.status is RunStatus.RUNNING  # the dead worker still holds it
        engine = Engine(env.store, Registry(crashy))  # a new executor, real time
        with pytest.raises(LeaseHeld):
            await engine.run_segment(run.run_id)
        await asyncio.sleep(1.1)  # the worker's 1 s lease runs out
        outcome = await engine.run_segment(run.run_id)
        await engine.close()

        assert outcome.status is RunStatus.COMPLETED
        assert outcome.output == ["a", "b", "c", "d"]
        rows = await env.store.pool.fetch(f"SELECT step, n FROM {COUNTS_TABLE}")
        assert {r["step"]: r["n"] for r in rows} == expected


async def test_uninterrupted_worker_completes_in_one_segment(make_env, pg_dsn: str) -> None:
    async with make_env(crashy) as env:
        schema = env.store.schema
        await env.store.pool.execute(
            f"CREATE TABLE {COUNTS_TABLE} (step text PRIMARY KEY, n int NOT NULL)"
        )
        run = await env.engine.start(crashy, [pg_dsn, schema])
        assert run_worker(pg_dsn, schema, run.run_id, "") == 0
        assert (await env.run(run.run_id)).status is RunStatus.COMPLETED
