"""What a context lends a handler: env, the application database, HTTP with breakers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import pytest

from kflow import MappingEnv, RunStatus, WorkflowContext, workflow

pytestmark = pytest.mark.integration


class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012 - shared by the server's handler instances

    def do_GET(self) -> None:
        self.hits.append(self.path)
        code = 503 if self.path.startswith("/down") else 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"path": "%s"}' % self.path.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_http_calls_in_steps_and_the_breaker(make_env, http_base: str) -> None:
    @workflow(name="caller", steps=["fetch", "probe"])
    async def wf(ctx: WorkflowContext) -> dict[str, object]:
        ctx.set_http_timeout(timedelta(seconds=5))

        async def fetch() -> object:
            return (await ctx.http.get(f"{http_base}/orders/1")).json()

        async def probe() -> list[int | str]:
            codes = [(await ctx.http.get(f"{http_base}/down")).status_code for _ in range(5)]
            try:
                await ctx.http.get(f"{http_base}/down")
            except Exception as exc:
                codes.append(type(exc).__name__)  # type: ignore[arg-type]
            return codes

        raw = await ctx.raw_http.get(f"{http_base}/raw")
        return {
            "fetch": await ctx.step("fetch", fetch),
            "probe": await ctx.step("probe", probe),
            "raw": raw.status_code,
        }

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.status is RunStatus.COMPLETED
        assert outcome.output == {
            "fetch": {"path": "/orders/1"},
            "probe": [503, 503, 503, 503, 503, "CircuitOpenError"],
            "raw": 200,
        }


async def test_env_provider_and_app_database(make_env, pg_dsn: str) -> None:
    @workflow(name="configured", steps=["query"])
    async def wf(ctx: WorkflowContext) -> dict[str, object]:
        limit = ctx.env_parse("LIMIT", int)
        region = ctx.env_or("REGION", "eu-1")
        total = await ctx.step("query", lambda: ctx.db.fetchval("SELECT $1::int * 2", limit))
        return {"limit": limit, "region": region, "total": total}

    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        async with make_env(wf, env=MappingEnv({"LIMIT": "21"}), app_db=pool) as env:
            outcome = await env.execute(wf)
            assert outcome.output == {"limit": 21, "region": "eu-1", "total": 42}
    finally:
        await pool.close()


async def test_missing_app_database_is_a_clear_error(make_env) -> None:
    @workflow(name="no-db")
    async def wf(ctx: WorkflowContext) -> None:
        ctx.db  # noqa: B018 - the access itself is what fails

    async with make_env(wf) as env:
        outcome = await env.execute(wf)
        assert outcome.error == (
            "KflowError: no application database is configured: pass app_db= to Engine"
        )
