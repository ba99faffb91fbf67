"""The plugin's few Kubernetes calls, with every failure turned into one readable line.

The official client (sync) reads the kubeconfig as kubectl does (``$KUBECONFIG``, or
``~/.kube/config``; ``--kubeconfig``, ``--context``). Its exceptions carry response
headers and client objects, so none is ever printed as is: `PluginError` says what was
refused or unreachable, in words, and never includes credentials.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from kflow.resources import GROUP, VERSION

__all__ = ["Cluster", "Forbidden", "PluginError", "context_namespace"]

RUNS = f"workflowruns.{GROUP}"
TIMEOUT = (10.0, 60.0)
"""Connect and read timeouts of each call: an unreachable server fails in seconds."""


class PluginError(Exception):
    """A failure to report as one line (``error: ...``) and a non-zero exit."""


class Forbidden(PluginError):
    """RBAC refused a call (403)."""


def context_namespace(contexts: list[Mapping[str, Any]], current: Any, wanted: str | None) -> str:
    """The namespace of the kubeconfig context in use (``--context``, else the current
    one), as kubectl picks it; ``default`` when the context names none."""
    chosen: Any = current
    if wanted is not None:
        chosen = next((c for c in contexts if c.get("name") == wanted), None)
    context = (chosen or {}).get("context") or {}
    return str(context.get("namespace") or "default")


def _server_message(exc: ApiException) -> tuple[str, Mapping[str, Any]]:
    """The API server's own message and details from its Status body."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return str(exc.reason or "").strip(), {}
    if not isinstance(body, dict):
        return str(exc.reason or "").strip(), {}
    return str(body.get("message") or exc.reason or ""), body.get("details") or {}


def _cause(exc: BaseException) -> str:
    """Why a connection failed, without urllib3's object reprs: the innermost OS error."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        reason = getattr(current, "reason", None)  # urllib3's MaxRetryError wraps this way
        if isinstance(reason, BaseException):
            current = reason
        else:
            current = current.__cause__ or current.__context__
    for found in reversed(chain):
        if isinstance(found, OSError) and found.strerror:
            return str(found.strerror)
    return re.sub(r"^<[^>]*>: ", "", str(chain[-1])) or type(chain[-1]).__name__


class Cluster:
    """WorkflowRuns and their Events in one API server, as a kubeconfig user."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.namespace = namespace
        self._api = api
        self._objects = k8s.CustomObjectsApi(api)

    @classmethod
    def connect(
        cls, *, kubeconfig: str | None, context: str | None, namespace: str | None
    ) -> Cluster:
        """From the kubeconfig, as kubectl reads it; ``namespace`` overrides the
        context's."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            contexts, current = k8s_config.list_kube_config_contexts(kubeconfig)  # type: ignore[no-untyped-call]
        except (k8s_config.ConfigException, OSError, ValueError) as exc:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise PluginError(f"cannot use the kubeconfig ({where}): {exc}") from None
        # One attempt per call: urllib3's retries log a warning each, burying the error.
        configuration.retries = 0
        return cls(
            k8s.ApiClient(configuration),
            namespace or context_namespace(contexts, current, context),
        )

    def close(self) -> None:
        self._api.close()

    @property
    def server(self) -> str:
        """The API server's address, without any user info the URL might carry."""
        parts = urlsplit(str(self._api.configuration.host))
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    @contextmanager
    def _calling(
        self, verb: str, resource: str, name: str | None = None, *, everywhere: bool = False
    ) -> Iterator[None]:
        try:
            yield
        except ApiException as exc:
            raise self._refusal(exc, verb, resource, name, everywhere) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = _cause(exc)
            raise PluginError(f"cannot reach the API server at {self.server}: {reason}") from None

    def _refusal(
        self, exc: ApiException, verb: str, resource: str, name: str | None, everywhere: bool
    ) -> PluginError:
        message, details = _server_message(exc)
        where = "in all namespaces" if everywhere else f'in namespace "{self.namespace}"'
        if exc.status == 404 and name is not None and details.get("name"):
            return PluginError(f"workflowrun {name} not found in namespace {self.namespace}")
        if exc.status == 404:
            return PluginError(
                f"the API server at {self.server} does not serve {resource}: are the kflow "
                "CRDs installed?"
            )
        if exc.status == 403:
            said = message.split("forbidden: ", 1)[-1]
            return Forbidden(f"not allowed to {verb} {resource} {where} ({said})")
        if exc.status == 401:
            return PluginError(
                f"the API server at {self.server} refused the kubeconfig's credentials "
                "(401 Unauthorized)"
            )
        return PluginError(f"the API server refused to {verb} {resource} ({exc.status}): {message}")

    def get_run(self, name: str) -> dict[str, Any]:
        with self._calling("get", RUNS, name):
            run: Any = self._objects.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workflowruns", name, _request_timeout=TIMEOUT
            )
        return dict(run)

    def list_runs(self, *, all_namespaces: bool) -> list[dict[str, Any]]:
        found: Any
        with self._calling("list", RUNS, everywhere=all_namespaces):
            if all_namespaces:
                found = self._objects.list_cluster_custom_object(
                    GROUP, VERSION, "workflowruns", _request_timeout=TIMEOUT
                )
            else:
                found = self._objects.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "workflowruns", _request_timeout=TIMEOUT
                )
        return list(found.get("items") or [])

    def annotate_run(self, name: str, key: str, value: str) -> None:
        """Set one annotation (a merge patch: other annotations stay as they are)."""
        body = {"metadata": {"annotations": {key: value}}}
        with self._calling("patch", RUNS, name):
            self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workflowruns", name, body,
                _request_timeout=TIMEOUT,
            )  # fmt: skip

    def run_events(self, run: Mapping[str, Any]) -> list[dict[str, Any]] | str:
        """The Kubernetes Events of ``run`` (this object, by uid, not an older namesake),
        or why they may not be read: a run's description is still worth showing then."""
        meta = run["metadata"]
        selector = (
            f"involvedObject.kind=WorkflowRun,involvedObject.name={meta['name']},"
            f"involvedObject.uid={meta.get('uid', '')}"
        )
        try:
            with self._calling("list", "events"):
                # Made here: importing CoreV1Api (all its models) takes half a second,
                # which only describe should pay. Raw JSON: the V1Event model refuses
                # some valid Events.
                response: Any = k8s.CoreV1Api(self._api).list_namespaced_event(
                    self.namespace, field_selector=selector, _preload_content=False,
                    _request_timeout=TIMEOUT,
                )  # fmt: skip
                items = json.loads(response.data).get("items") or []
        except Forbidden as exc:
            return str(exc)
        return list(items)
