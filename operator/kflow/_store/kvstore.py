"""The workflows' durable key-value store (``ctx.kv``): one namespace per workflow."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kflow._store.base import StoreBase, guarded

__all__ = ["KeyValues"]


class KeyValues(StoreBase):
    @guarded
    async def kv_get(self, namespace: str, key: str) -> tuple[bool, Any]:
        row = await self.pool.fetchrow(
            "SELECT value FROM kv WHERE namespace = $1 AND key = $2", namespace, key
        )
        return (False, None) if row is None else (True, row["value"])

    @guarded
    async def kv_set(self, namespace: str, key: str, value: Any, *, now: datetime) -> None:
        await self.pool.execute(
            """INSERT INTO kv (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (namespace, key) DO UPDATE
               SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at""",
            namespace,
            key,
            value,
            now,
        )

    @guarded
    async def kv_delete(self, namespace: str, key: str) -> bool:
        done = await self.pool.fetchval(
            "DELETE FROM kv WHERE namespace = $1 AND key = $2 RETURNING 1", namespace, key
        )
        return done is not None

    @guarded
    async def kv_keys(self, namespace: str, prefix: str = "") -> list[str]:
        rows = await self.pool.fetch(
            "SELECT key FROM kv WHERE namespace = $1 AND starts_with(key, $2) ORDER BY key",
            namespace,
            prefix,
        )
        return [r["key"] for r in rows]
