"""The pod executor's pure parts: the segment Pod manifest (names, ownership, secrets,
restricted security), reading how a Pod ended, and where a run's segments go."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kflow.controller.catalog import Catalog, Placement
from kflow.controller.pod_manifest import (
    RUN_LABEL,
    SEGMENT_LABEL,
    pod_end,
    pod_name,
    pod_problem,
    pod_started,
    segment_pod,
)
from kflow.controller.runs import RunRef
from kflow.resources import PodTemplate, WorkflowDefinitionSpec

REF = RunRef(namespace="shop", name="Order_42.Very-Long-" + "x" * 80, uid="0123abcd-ffff-4444")


def test_pod_names_are_deterministic_dns_labels() -> None:
    name = pod_name(REF, 3)
    assert name == pod_name(REF, 3) != pod_name(REF, 4)
    assert len(name) <= 63 and name.endswith("-0123abcd-s3")
    assert name == name.lower() and "_" not in name and "." not in name


def test_segment_pod_is_restricted_owned_and_gets_the_dsn_from_a_secret() -> None:
    template = PodTemplate.model_validate(
        {"image": "registry.example/orders:1.4", "env": [{"name": "REGION", "value": "eu"}],
         "modules": ["orders.workflows"],
         "resources": {"limits": {"memory": "256Mi"}}, "serviceAccountName": "orders"}
    )  # fmt: skip
    pod = segment_pod(
        REF, segment=2, template=template, dsn_secret="kflow-db", schema="kflow",
    )  # fmt: skip
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"][RUN_LABEL] == REF.uid and meta["labels"][SEGMENT_LABEL] == "2"
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("WorkflowRun", REF.uid, True)
    (container,) = spec["containers"]
    assert container["command"] == ["kflow"]
    assert container["args"] == ["runner", "--run", REF.uid]
    env = {e["name"]: e for e in container["env"]}
    assert env["KFLOW_DSN"] == {
        "name": "KFLOW_DSN", "valueFrom": {"secretKeyRef": {"name": "kflow-db", "key": "dsn"}}
    }  # fmt: skip
    assert env["KFLOW_WORKFLOW_MODULES"]["value"] == '["orders.workflows"]'
    assert env["REGION"]["value"] == "eu"
    assert "postgresql://" not in str(pod)
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}
    }  # fmt: skip
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True, "runAsNonRoot": True,
    }  # fmt: skip
    assert container["resources"] == {"limits": {"memory": "256Mi"}}
    assert spec["serviceAccountName"] == "orders"


def test_steal_modules_and_the_default_service_account() -> None:
    template = PodTemplate.model_validate({"image": "orders:1"})
    pod = segment_pod(REF, segment=1, template=template, dsn_secret="db", schema="kflow",
                      steal=True, service_account="kflow-runner")  # fmt: skip
    assert pod["spec"]["serviceAccountName"] == "kflow-runner"
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["runner", "--run", REF.uid, "--steal"]
    assert "KFLOW_WORKFLOW_MODULES" not in {e["name"] for e in container["env"]}


def test_a_template_adds_volumes_pull_secrets_affinity_labels_and_annotations() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["batch"]}]}]}}}  # fmt: skip
    template = PodTemplate.model_validate({
        "image": "orders:1", "affinity": affinity,
        "imagePullSecrets": [{"name": "team-registry"}, {"name": "shared-registry"}],
        "volumes": [{"name": "certs", "secret": {"secretName": "orders-ca"}}],
        "volumeMounts": [{"name": "certs", "mountPath": "/etc/orders", "readOnly": True}],
        "labels": {"team": "orders", "app.kubernetes.io/managed-by": "someone-else"},
        "annotations": {"prometheus.io/scrape": "false"},
    })  # fmt: skip
    pod = segment_pod(REF, segment=1, template=template, dsn_secret="db", schema="kflow",
                      image_pull_secrets=["shared-registry", "kflow-registry"])  # fmt: skip
    meta, spec = pod["metadata"], pod["spec"]
    assert spec["affinity"] == affinity
    assert spec["imagePullSecrets"] == [  # the operator's first, each once
        {"name": "shared-registry"}, {"name": "kflow-registry"}, {"name": "team-registry"},
    ]  # fmt: skip
    assert spec["volumes"] == [
        {"name": "tmp", "emptyDir": {}}, {"name": "certs", "secret": {"secretName": "orders-ca"}},
    ]  # fmt: skip
    (container,) = spec["containers"]
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "certs", "mountPath": "/etc/orders", "readOnly": True},
    ]
    assert meta["labels"]["team"] == "orders" and meta["labels"][RUN_LABEL] == REF.uid
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "kflow"  # kflow's own wins
    assert meta["annotations"] == {"prometheus.io/scrape": "false"}
    bare = segment_pod(REF, segment=1, template=PodTemplate(image="orders:1"),
                       dsn_secret="db", schema="kflow")  # fmt: skip
    assert "imagePullSecrets" not in bare["spec"] and "annotations" not in bare["metadata"]


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "volumes: 'tmp' is the segment Pod's"),
        ({"volumeMounts": [{"name": "x", "mountPath": "/tmp/"}]}, "volumeMounts: /tmp is"),
        ({"labels": {"kflow.io/run": "x"}}, "labels: kflow.io/run: kflow.io/ labels are"),
        ({"imagePullSecrets": [{}]}, "imagePullSecrets.0.name"),
    ],
)
def test_a_template_cannot_replace_what_kflow_relies_on(field: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        PodTemplate.model_validate({"image": "orders:1", **field})


def _pod(phase: str, **status: object) -> dict[str, object]:
    return {"status": {"phase": phase, **status}}


def _ended(code: int, reason: str = "Error") -> dict[str, object]:
    return {"containerStatuses": [{"state": {"terminated": {"exitCode": code, "reason": reason}}}]}


@pytest.mark.parametrize(
    ("pod", "deleted", "ok", "says"),
    [
        (_pod("Succeeded"), False, True, "completed"),
        (_pod("Failed", **_ended(3)), False, False, "code 3: another executor held"),
        (_pod("Failed", **_ended(137, "OOMKilled")), False, False, "out of memory"),
        (_pod("Failed", **_ended(1)), False, False, "code 1: Error"),
        (_pod("Failed", reason="Evicted", message="low on memory"), False, False, "Evicted"),
        (_pod("Running"), True, False, "deleted before it finished"),
        (_pod("Failed"), False, False, "without a container status"),
    ],
)
def test_how_a_segment_pod_ended(pod: dict[str, Any], deleted: bool, ok: bool, says: str) -> None:
    end = pod_end(pod, deleted=deleted)
    assert end is not None and end.ok is ok and says in end.message


def test_running_and_pending_pods_have_not_ended_and_say_why_they_wait() -> None:
    assert pod_end(_pod("Running")) is None and pod_end(_pod("Pending")) is None
    pulling = _pod("Pending", containerStatuses=[
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
    ])  # fmt: skip
    assert pod_problem(pulling) == "ImagePullBackOff: no such image"
    assert not pod_started(pulling)
    unschedulable = _pod("Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1"}
    ])  # fmt: skip
    assert pod_problem(unschedulable) == "Unschedulable: 0/1"
    creating = _pod(
        "Pending", containerStatuses=[{"state": {"waiting": {"reason": "ContainerCreating"}}}]
    )
    assert pod_problem(creating) is None
    assert pod_started(_pod("Running", containerStatuses=[{"state": {"running": {}}}]))


def test_placement_follows_the_workflow_resource_of_the_runs_namespace() -> None:
    def spec(version: int, **fields: object) -> WorkflowDefinitionSpec:
        return WorkflowDefinitionSpec.model_validate(
            {"workflow": "orders", "version": version, "signature": "a" * 64, **fields}
        )

    catalog = Catalog(default="inline")
    assert catalog.placement("shop", "orders", None) == Placement("inline")
    catalog.put("u1", "shop", spec(1, executor="pod", template={"image": "orders:1"}))
    catalog.put("u2", "shop", spec(2, executor="pod"))
    catalog.put("u3", "other", spec(3, executor="inline"))
    assert catalog.placement("shop", "orders", 1).template == PodTemplate(image="orders:1")
    assert "no spec.template" in (catalog.placement("shop", "orders", None).problem or "")
    assert catalog.placement("other", "orders", None) == Placement("inline")
    catalog.remove("u2")
    assert catalog.find("shop", "orders", None) == spec(1, executor="pod",
                                                        template={"image": "orders:1"})  # fmt: skip
    # An object edited to declare another workflow no longer answers for the first.
    catalog.put("u1", "shop", spec(1, executor="pod").model_copy(update={"workflow": "refunds"}))
    assert catalog.find("shop", "orders", None) is None
    assert catalog.find("shop", "refunds", 1) is not None
    catalog.remove("u1")
    catalog.remove("u1")  # a deletion seen twice
    assert catalog.find("shop", "refunds", None) is None
    strict = Catalog(default="pod")
    assert "no Workflow resource declares 'orders'" in (
        strict.placement("shop", "orders", None).problem or ""
    )
