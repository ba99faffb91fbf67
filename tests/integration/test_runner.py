"""``kflow runner``: one segment per process, with exit codes an executor can act on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from kflow import RunStatus
from kflow._store.progress import ProgressListener
from kflow.dev.postgres import free_port
from kflow.runner import EXIT_LEASE_HELD, EXIT_NO_RUN, EXIT_STORE
from tests.integration.runner_workflows import two_segments

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def runner(run_id: object, *args: str, **env: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "kflow.cli", "runner", "--run", str(run_id), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "KFLOW_WORKFLOW_MODULES": '["tests.integration.runner_workflows"]', **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return proc.returncode, json.loads(last) if last.startswith("{") else {"stderr": proc.stderr}


async def test_a_run_advances_one_segment_per_process(make_env, pg_dsn: str) -> None:
    async with make_env(two_segments) as env:
        run = await env.engine.start(two_segments, "pod")
        store_env = {"KFLOW_DSN": pg_dsn, "KFLOW_SCHEMA": env.store.schema}
        code, first = runner(run.run_id, **store_env)
        assert (code, first["status"], first["error"]) == (0, "Waiting", None)
        await asyncio.sleep(1.1)  # the sleep is real time for the runner
        code, second = runner(run.run_id, **store_env)
        assert (code, second["status"]) == (0, "Completed")
        done = await env.run(run.run_id)
        assert done.status is RunStatus.COMPLETED and done.output == "hello pod"
        assert done.segments == 2


async def test_exit_codes_say_why_nothing_was_done(make_env, pg_dsn: str) -> None:
    async with make_env(two_segments) as env:
        store_env = {"KFLOW_DSN": pg_dsn, "KFLOW_SCHEMA": env.store.schema}
        run = await env.engine.start(two_segments, "busy")
        await env.store.acquire_lease(
            run.run_id, owner="elsewhere", now=env.clock.now(), ttl=timedelta(hours=1),
            steal=False,
        )  # fmt: skip
        code, held = runner(run.run_id, **store_env)
        assert code == EXIT_LEASE_HELD and "leased by elsewhere" in str(held["error"])
        code, _ = runner(uuid.uuid4(), **store_env)
        assert code == EXIT_NO_RUN
        unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        code, down = runner(run.run_id, KFLOW_DSN=unreachable, KFLOW_DB_TIMEOUT="2")
        assert code == EXIT_STORE and "cannot open the kflow store" in str(down["error"])
        code, _ = runner("not-a-uuid", **store_env)
        assert code == 2
        code, _ = runner(run.run_id)  # no KFLOW_DSN
        assert code == 2


async def test_records_are_announced_and_steal_takes_a_dead_holders_lease(
    make_env, pg_dsn: str
) -> None:
    async with make_env(two_segments) as env:
        heard: list[uuid.UUID] = []
        listening = asyncio.Event()
        listener = ProgressListener(
            pg_dsn, env.store.schema, on_progress=heard.append, on_reconnect=listening.set
        )
        task = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(listening.wait(), timeout=10)
            run = await env.engine.start(two_segments, "thief")
            await env.store.acquire_lease(
                run.run_id, owner="dead-pod", now=env.clock.now(), ttl=timedelta(hours=1),
                steal=False,
            )  # fmt: skip
            store_env = {"KFLOW_DSN": pg_dsn, "KFLOW_SCHEMA": env.store.schema}
            code, out = await asyncio.to_thread(runner, run.run_id, "--steal", **store_env)
            assert (code, out["status"]) == (0, "Waiting")
            for _ in range(50):
                if run.run_id in heard:
                    break
                await asyncio.sleep(0.1)
            assert heard and set(heard) == {run.run_id}
        finally:
            task.cancel()
