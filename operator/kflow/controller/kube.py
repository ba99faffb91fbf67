"""`KubeApi`: the few Kubernetes calls the operator makes outside kopf's handlers.

Status mirroring, annotation removal and Kubernetes Events happen from background tasks
(a segment's steps, timers), where kopf's per-handler ``patch`` is not available. They go
through one aiohttp session (kopf's own HTTP library), so they never block the event
loop; httpx cost about three times the CPU per request here, a third of the operator's
CPU under load (bench/README.md). Credentials come from the kubeconfig or the in-cluster
service account, read by the official client's loader; a projected service-account
token is re-read from its file as it rotates.
"""

from __future__ import annotations

import json
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from kflow._errors import ApiError
from kflow.apierrors import error_from
from kflow.resources import GROUP, VERSION

__all__ = ["KubeApi", "event_body"]

CONNECTIONS = 16
"""Kept-alive connections to the API server. A burst of status writes (hundreds of runs
finishing at once) queues for these instead of opening a TLS connection each: a
handshake costs more CPU, on both sides, than the PATCH it carries."""

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class _Token:
    """Bearer token (re-read from the service-account file each minute), or none (certs)."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._token, self._file, self._read_at = token, token_file, time.monotonic()

    def headers(self) -> dict[str, str]:
        if self._file is not None and time.monotonic() - self._read_at > 60:
            self._token, self._read_at = self._file.read_text().strip(), time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


class KubeApi:
    def __init__(self, *, host: str, context: ssl.SSLContext, token: _Token) -> None:
        self._host = host.rstrip("/")
        self._context = context
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls) -> KubeApi:
        """From ``$KUBECONFIG``/``~/.kube/config``, else the in-cluster service account."""
        cfg = k8s_client.Configuration()
        in_cluster = False
        try:
            k8s_config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            in_cluster = True
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file and cfg.key_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        bearer = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        token = bearer.removeprefix("Bearer ").strip() if bearer else None
        return cls(
            host=cfg.host, context=context, token=_Token(token, SA_TOKEN if in_cluster else None)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send(self, method: str, path: str, body: Any, content_type: str) -> Any:
        if self._session is None:  # made here: a session belongs to the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context, limit=CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        try:
            async with self._session.request(
                method,
                self._host + path,
                data=None if body is None else json.dumps(body),
                headers={
                    **({"Content-Type": content_type} if body is not None else {}),
                    **self._token.headers(),
                },
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:  # the timeout counts a queued wait
            raise ApiError(0, f"cannot reach the API server: {exc!r}") from exc
        if status >= 400:
            raise error_from(status, text)
        return json.loads(text)

    @staticmethod
    def _run_path(namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/workflowruns/{name}"

    async def get_run(self, namespace: str, name: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._send("GET", self._run_path(namespace, name), None, "")
        return body

    async def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a WorkflowRun's status subresource."""
        await self._send(
            "PATCH",
            self._run_path(namespace, name) + "/status",
            {"status": status},
            "application/merge-patch+json",
        )

    async def delete_run(self, namespace: str, name: str, *, uid: str) -> None:
        """Delete the WorkflowRun if it is still the object ``uid`` (not one made again
        under its name); one already gone is fine."""
        try:
            await self._send(
                "DELETE", self._run_path(namespace, name),
                {"preconditions": {"uid": uid}, "propagationPolicy": "Background"},
                "application/json",
            )  # fmt: skip
        except ApiError as exc:
            if exc.status not in (404, 409):  # 409: the uid precondition failed
                raise

    async def list_workflows(self, namespaces: list[str]) -> list[dict[str, Any]]:
        """`WorkflowDefinition` objects in ``namespaces`` (all namespaces when empty)."""
        base = f"/apis/{GROUP}/{VERSION}"
        plural = "workflowdefinitions"
        paths = [f"{base}/namespaces/{ns}/{plural}" for ns in namespaces] or [f"{base}/{plural}"]
        found: list[dict[str, Any]] = []
        for path in paths:
            found.extend((await self._send("GET", path, None, "")).get("items") or [])
        return found

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector (read from etcd: no stale cache)."""
        body = await self._send(
            "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={quote(selector)}", None, ""
        )
        return list(body.get("items") or [])

    async def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        namespace = pod["metadata"]["namespace"]
        body: dict[str, Any] = await self._send(
            "POST", f"/api/v1/namespaces/{namespace}/pods", pod, "application/json"
        )
        return body

    async def delete_pod(self, namespace: str, name: str, *, grace_seconds: int | None) -> None:
        """Delete a Pod (with a grace period for its processes); a Pod already gone is fine."""
        query = "" if grace_seconds is None else f"?gracePeriodSeconds={grace_seconds}"
        try:
            await self._send("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}{query}",
                             None, "")  # fmt: skip
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def remove_annotation(self, namespace: str, name: str, key: str, value: str) -> bool:
        """Remove annotation ``key`` if it still holds ``value``; False if it changed."""
        pointer = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        try:
            await self._send(
                "PATCH",
                self._run_path(namespace, name),
                [
                    {"op": "test", "path": pointer, "value": value},
                    {"op": "remove", "path": pointer},
                ],
                "application/json-patch+json",
            )
        except ApiError as exc:
            if exc.status in (404, 409, 422):
                return False
            raise
        return True

    # -- the leader's Lease (coordination.k8s.io/v1), `kflow.controller.kube_lease` ----

    @staticmethod
    def _lease_path(namespace: str, name: str = "") -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return f"{path}/{name}" if name else path

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease, or None if there is none."""
        try:
            body: dict[str, Any] = await self._send(
                "GET", self._lease_path(namespace, name), None, ""
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return body

    async def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease; `ApiError` 409 if another replica made it first."""
        body: dict[str, Any] = await self._send(
            "POST", self._lease_path(namespace), lease, "application/json"
        )
        return body

    async def replace_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        """Replace the Lease (a PUT carrying the ``resourceVersion`` read): `ApiError` 409
        if another replica wrote it since, so two can never both believe they took it."""
        name = lease["metadata"]["name"]
        body: dict[str, Any] = await self._send(
            "PUT", self._lease_path(namespace, name), lease, "application/json"
        )
        return body

    async def post_event(
        self,
        *,
        namespace: str,
        name: str,
        uid: str,
        type: str,
        reason: str,
        message: str,
        kind: str = "WorkflowRun",
    ) -> None:
        """Record a Kubernetes Event on a WorkflowRun, or another kflow object of ``kind``
        (``kubectl describe`` shows it)."""
        body = event_body(namespace=namespace, name=name, uid=uid, type=type, reason=reason,
                          message=message, kind=kind)  # fmt: skip
        await self._send("POST", f"/api/v1/namespaces/{namespace}/events", body, "application/json")


def event_body(
    *, namespace: str, name: str, uid: str, type: str, reason: str, message: str,
    kind: str = "WorkflowRun",
) -> dict[str, Any]:  # fmt: skip
    """The Kubernetes Event the operator posts on a WorkflowRun (or a Workflow)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "metadata": {"generateName": f"{name}."},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "name": name,
            "namespace": namespace,
            "uid": uid,
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": "kflow-operator"},
    }
