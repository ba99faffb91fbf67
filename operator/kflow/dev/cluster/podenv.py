"""What a Pod's container sees when the node stand-in runs it as a local process.

Resolves a container's ``env`` and ``envFrom`` (literal values with ``$(VAR)`` expansion,
``secretKeyRef``, ``configMapKeyRef`` and the downward API's ``fieldRef``), expands its
``command``/``args``, and writes the Pod's service-account credentials into the Pod's
directory. A problem a kubelet would report as ``CreateContainerConfigError`` raises
`PodConfigError`; the stand-in retries it as a kubelet does.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from kflow.dev.cluster.kubeconfig import ApiEndpoint, write_kubeconfig
from kflow.dev.cluster.rest import ApiError, Obj, Rest

__all__ = [
    "PodConfigError",
    "command_line",
    "container_env",
    "mount_volumes",
    "translate",
    "write_credentials",
]

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL_REF = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
_TOKEN_SECONDS = 24 * 3600  # the stand-in does not refresh tokens, unlike a kubelet


class PodConfigError(RuntimeError):
    """The container cannot be configured yet (a missing Secret key, no command, ...)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` means ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def field_ref(pod: Obj, path: str) -> str:
    """The downward API: the value of a Pod field named by a ``fieldRef.fieldPath``."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
    }
    if path in simple:
        return str(simple[path] or "")
    m = _LABEL_REF.fullmatch(path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    raise PodConfigError(f"fieldRef {path!r} is not modelled by the node stand-in")


class _Lookup:
    """Reads Secrets and ConfigMaps of one namespace, once each per resolution."""

    def __init__(self, rest: Rest, namespace: str) -> None:
        self.rest, self.namespace = rest, namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str, *, optional: bool) -> dict[str, str] | None:
        if (kind, name) not in self._cache:
            try:
                obj = self.rest.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
            except ApiError as e:
                if e.status != 404:
                    raise
                self._cache[kind, name] = None
            else:
                raw: dict[str, str] = obj.get("data") or {}
                if kind == "secrets":
                    try:
                        raw = {k: base64.b64decode(v).decode() for k, v in raw.items()}
                    except UnicodeDecodeError as e:
                        raise PodConfigError(
                            f"secret {name!r} holds binary data (not modelled by the stand-in)"
                        ) from e
                self._cache[kind, name] = raw
        found = self._cache[kind, name]
        if found is None and not optional:
            raise PodConfigError(f"{kind[:-1]} {name!r} not found")
        return found

    def key(self, kind: str, ref: Obj) -> str | None:
        optional = bool(ref.get("optional", False))
        data = self.data(kind, ref["name"], optional=optional)
        if data is None:
            return None
        if ref["key"] not in data:
            if optional:
                return None
            raise PodConfigError(f"couldn't find key {ref['key']} in {kind[:-1]} {ref['name']}")
        return data[ref["key"]]


def container_env(rest: Rest, pod: Obj, *, container: Obj, base: dict[str, str]) -> dict[str, str]:
    """The process environment of `container`: `base`, then envFrom, then env, in order."""
    lookup = _Lookup(rest, pod["metadata"]["namespace"])
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if key in source:
                ref = source[key]
                data = lookup.data(kind, ref["name"], optional=bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            value = lookup.key("secrets", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = lookup.key("configmaps", source["configMapKeyRef"])
        else:
            raise PodConfigError(f"env {name}: {sorted(source)} is not modelled by the stand-in")
        if value is not None:
            env[name] = value
    return env


def command_line(container: Obj, env: dict[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; images are not modelled, so a
    container without ``command`` cannot run here."""
    command = container.get("command") or []
    if not command:
        raise PodConfigError(
            f"container {container['name']!r} has no command: the node stand-in runs no "
            "images, so it cannot know an image's entrypoint"
        )
    return [expand(arg, env) for arg in [*command, *(container.get("args") or [])]]


def write_credentials(rest: Rest, pod: Obj, *, pod_dir: Path, ca_file: Path) -> Path | None:
    """Write the Pod's service-account credentials; return the kubeconfig, or None when
    ``automountServiceAccountToken`` is false.

    The token comes from the TokenRequest API, bound to the Pod (as a kubelet's projected
    token is): it stops working when the Pod is deleted. The in-cluster files (``token``,
    ``ca.crt``, ``namespace``) go to ``<pod dir>/serviceaccount/``, since the real path
    ``/var/run/secrets/kubernetes.io/serviceaccount`` cannot differ per process; clients
    find the API server through ``KUBECONFIG`` pointing at ``<pod dir>/kubeconfig``.
    """
    meta, spec = pod["metadata"], pod["spec"]
    namespace, sa = meta["namespace"], spec.get("serviceAccountName") or "default"
    if spec.get("automountServiceAccountToken") is False:
        return None
    try:
        answer = rest.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "expirationSeconds": _TOKEN_SECONDS,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                       "name": meta["name"], "uid": meta["uid"]},
                },
            },
        )  # fmt: skip
    except ApiError as e:
        raise PodConfigError(f"no token for service account {namespace}/{sa}: {e}") from e
    token = str(answer["status"]["token"])
    sa_dir = pod_dir / "serviceaccount"
    sa_dir.mkdir(parents=True, exist_ok=True)
    for name, content in (("token", token), ("namespace", namespace),
                          ("ca.crt", ca_file.read_text())):  # fmt: skip
        path = sa_dir / name
        path.touch(mode=0o600)
        path.write_text(content)
    endpoint = ApiEndpoint(server=rest.endpoint.server, ca_file=sa_dir / "ca.crt", token=token)
    return write_kubeconfig(pod_dir / "kubeconfig", endpoint, user=sa, namespace=namespace)


def mount_volumes(rest: Rest, pod: Obj, *, container: Obj, pod_dir: Path) -> dict[str, Path]:
    """Write the Secret and ConfigMap volumes `container` mounts under
    ``<pod dir>/volumes/<volume>/`` (files only the Pod's user reads); return each
    ``mountPath`` with its directory. A process cannot have its own ``/var/run/...``, so
    `translate` rewrites the container's env values and arguments that start with a mount
    path. Not modelled: ``subPath``, ``binaryData``, a mount at ``/``."""
    lookup = _Lookup(rest, pod["metadata"]["namespace"])
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"], {})
        if mount["mountPath"].rstrip("/") == "":
            raise PodConfigError("a volume mounted at / is not modelled by the node stand-in")
        for kind, key, name_key in (("secrets", "secret", "secretName"),
                                    ("configmaps", "configMap", "name")):  # fmt: skip
            if key not in volume:
                continue
            source = volume[key]
            data = lookup.data(kind, source[name_key], optional=bool(source.get("optional")))
            folder = pod_dir / "volumes" / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/")] = folder
            if data is None:  # optional and missing: an empty directory, as a kubelet makes
                continue
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] not in data:
                    raise PodConfigError(f"{key} {source[name_key]!r} has no key {item['key']!r}")
                path = folder / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(mode=0o600)
                path.write_text(data[item["key"]])
    return mounts


def translate(text: str, mounts: dict[str, Path]) -> str:
    """`text` with a leading mount path replaced by where the stand-in wrote that volume."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if text == mount_path or text.startswith(mount_path + "/"):
            return str(mounts[mount_path]) + text[len(mount_path) :]
    return text
