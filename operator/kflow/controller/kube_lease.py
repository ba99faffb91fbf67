"""The leader's Lease on the API server: `KubeLease`, the `LeaseStore` that
`kflow.controller.leader` elects with, and the Lease's wire form.

A write is a PUT of the object read with its ``spec`` replaced (as client-go's LeaseLock
does), so that labels or owner references someone put on the Lease stay; its
``resourceVersion`` makes a concurrent write fail with 409, which is `Conflict`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kflow._errors import ApiError
from kflow.controller.kube import KubeApi
from kflow.controller.leader import Conflict, LeaseRecord

__all__ = ["KubeLease", "lease_body", "parse_lease"]


def _micro(value: datetime | None) -> str | None:
    """A ``MicroTime`` (RFC 3339 with exactly six fractional digits, as the API wants)."""
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def lease_body(
    name: str, record: LeaseRecord, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Lease object for ``record``; ``base`` is the object read, whose metadata (labels,
    owner references) a PUT must carry to keep."""
    metadata = dict((base or {}).get("metadata") or {"name": name})
    if record.version:
        metadata["resourceVersion"] = record.version
    spec = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": max(1, round(record.duration)),
        "acquireTime": _micro(record.acquired),
        "renewTime": _micro(record.renewed),
        "leaseTransitions": record.transitions,
    }
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {k: v for k, v in spec.items() if v is not None}}  # fmt: skip


def parse_lease(body: dict[str, Any]) -> LeaseRecord:
    spec = body.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        acquired=_parse_time(spec.get("acquireTime")),
        renewed=_parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        version=str(body["metadata"].get("resourceVersion") or ""),
    )


class KubeLease:
    """The `LeaseStore` of one Lease on the API server."""

    def __init__(self, kube: KubeApi, namespace: str, name: str) -> None:
        self._kube, self._namespace, self._name = kube, namespace, name
        self._seen: dict[str, Any] | None = None

    def _keep(self, body: dict[str, Any]) -> LeaseRecord:
        self._seen = body
        return parse_lease(body)

    async def get(self) -> LeaseRecord | None:
        body = await self._kube.get_lease(self._namespace, self._name)
        return None if body is None else self._keep(body)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        try:
            body = await self._kube.create_lease(self._namespace, lease_body(self._name, record))
        except ApiError as exc:
            if exc.status == 409:
                raise Conflict(exc.message) from exc
            raise
        return self._keep(body)

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        seen = self._seen
        base = seen if seen and seen["metadata"].get("resourceVersion") == record.version else None
        try:
            body = await self._kube.replace_lease(
                self._namespace, lease_body(self._name, record, base)
            )
        except ApiError as exc:
            if exc.status == 409:
                raise Conflict(exc.message) from exc
            raise
        return self._keep(body)
