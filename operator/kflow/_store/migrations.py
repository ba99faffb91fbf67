"""Numbered, forward-only SQL migrations, applied under an advisory lock.

Files are ``NNNN_name.sql`` in this package's ``migrations/`` folder. Each is applied once,
in its own transaction, and recorded in ``schema_migrations``. Several processes starting
at once serialise on a PostgreSQL advisory lock keyed by the schema name, so exactly one
applies each migration. A database that has a migration this code does not know is
refused rather than silently run by older code.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from typing import Any

from kflow._errors import SchemaError

__all__ = ["MIGRATIONS", "apply_migrations"]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def _load() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("kflow._store").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [n for n, _, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"kflow migrations are not numbered 1..n without gaps: {numbers}")
    return found


MIGRATIONS = _load()


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"kflow-migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def apply_migrations(conn: Any, schema: str) -> list[int]:
    """Bring ``schema`` up to date on an asyncpg connection; returns what was applied."""
    applied: list[int] = []
    key = _lock_key(schema)
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(schema)}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]
            for r in await conn.fetch(f"SELECT version FROM {_quote(schema)}.schema_migrations")
        }
        newest = MIGRATIONS[-1][0] if MIGRATIONS else 0
        if done and max(done) > newest:
            raise SchemaError(
                f"schema {schema!r} has migration {max(done)}, newer than this kflow "
                f"({newest}): upgrade kflow rather than run old code on new state"
            )
        for number, name, sql in MIGRATIONS:
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {_quote(schema)}")
                await conn.execute(sql)
                await conn.execute(
                    f"INSERT INTO {_quote(schema)}.schema_migrations (version, name)"
                    " VALUES ($1, $2)",
                    number,
                    name,
                )
            applied.append(number)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return applied
