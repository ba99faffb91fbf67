"""The store's own guarantees: migrations under a lock, refusal of newer schemas, definitions."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from kflow import Store, WorkflowContext, workflow
from kflow._errors import SchemaError
from kflow._store.migrations import MIGRATIONS

pytestmark = pytest.mark.integration


async def test_concurrent_opens_apply_each_migration_once(pg_dsn: str) -> None:
    schema = f"kflow_mig_{uuid.uuid4().hex[:8]}"
    stores = await asyncio.gather(*(Store.open(pg_dsn, schema=schema) for _ in range(4)))
    try:
        rows = await stores[0].pool.fetch("SELECT version FROM schema_migrations")
        assert sorted(r["version"] for r in rows) == [n for n, _, _ in MIGRATIONS]
    finally:
        await stores[0].drop()
        for store in stores:
            await store.close()


async def test_a_schema_newer_than_the_code_is_refused(pg_dsn: str) -> None:
    schema = f"kflow_mig_{uuid.uuid4().hex[:8]}"
    store = await Store.open(pg_dsn, schema=schema)
    try:
        await store.pool.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')"
        )
        with pytest.raises(SchemaError, match="newer than this kflow"):
            await Store.open(pg_dsn, schema=schema)
    finally:
        await store.drop()
        await store.close()


async def test_register_definitions_records_signatures(make_env) -> None:
    @workflow(name="recorded", version=3, steps=["a"], events=["e"])
    async def wf(ctx: WorkflowContext, n: int) -> int:
        return n

    async with make_env(wf) as env:
        await env.engine.register_definitions()
        await env.engine.register_definitions()  # idempotent
        row = await env.store.pool.fetchrow("SELECT * FROM definitions")
        assert (row["name"], row["version"], row["signature"]) == ("recorded", 3, wf.signature)
        assert row["steps"] == ["a"] and row["events"] == ["e"]
        assert row["input_schema"] == {"type": "integer"}


async def test_the_store_works_with_its_own_schema_only(make_env, pg_dsn: str) -> None:
    @workflow(name="isolated")
    async def wf(ctx: WorkflowContext) -> str:
        return "ok"

    async with make_env(wf) as env, make_env(wf) as other:
        await env.execute(wf)
        assert await other.store.pool.fetchval("SELECT count(*) FROM runs") == 0
        conn = await asyncpg.connect(pg_dsn)
        try:
            count = await conn.fetchval(f'SELECT count(*) FROM "{env.store.schema}".runs')
        finally:
            await conn.close()
        assert count == 1


async def test_snapshot_reads_a_run_its_last_records_and_inbox_at_once(make_env) -> None:
    @workflow(name="many", steps=["s"], events=["e"])
    async def wf(ctx: WorkflowContext) -> None:
        for i in range(7):
            await ctx.step("s", lambda i=i: i)
        await ctx.wait_for_event("e")

    async with make_env(wf) as env:
        waiting = await env.execute(wf)
        await env.send_event(waiting.run_id, "e", {"x": 1})
        await env.send_event(waiting.run_id, "e", {"x": 2})
        run, last, total, inbox = await env.store.snapshot(waiting.run_id, last_steps=3)
        history = await env.history(waiting.run_id)
        assert total == len(history) == 8
        assert last == history[-3:]
        assert run.status.value == "Waiting" and run.waiting_event == "e"
        assert [(e["name"], e["consumed_by"]) for e in inbox] == [("e", None), ("e", None)]
