"""``ctx.kv``: a durable key-value store shared by the runs of one workflow and tenant.

Keys live in a namespace named after the workflow and the run's tenant, so runs of
``order-fulfilment`` share their keys and never see another workflow's, nor another
tenant's (the operator makes each Kubernetes namespace a tenant: runs in ``team-a`` never
read ``team-b``'s entries); runs without a tenant share per workflow. KV reads and
writes are not recorded in the run's history: another run may change a value between
replays. Read inside a step when the value decides the handler's path.
"""

from __future__ import annotations

import uuid
from typing import Any

from kflow._clock import Clock
from kflow._serde import decode, encode
from kflow._store import Store

__all__ = ["KvHandle", "kv_namespace"]


def kv_namespace(workflow: str, tenant_id: uuid.UUID | None) -> str:
    """Where a run's KV entries live: its workflow's, within its tenant when it has one."""
    return workflow if tenant_id is None else f"{tenant_id}/{workflow}"


class KvHandle:
    def __init__(self, store: Store, *, namespace: str, clock: Clock) -> None:
        self._store = store
        self.namespace = namespace
        self._clock = clock

    async def get(self, key: str, type: Any = None, default: Any = None) -> Any:
        found, value = await self._store.kv_get(self.namespace, key)
        return decode(value, type) if found else default

    async def set(self, key: str, value: Any) -> None:
        await self._store.kv_set(self.namespace, key, encode(value), now=self._clock.now())

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        return await self._store.kv_delete(self.namespace, key)

    async def keys(self, prefix: str = "") -> list[str]:
        return await self._store.kv_keys(self.namespace, prefix)
