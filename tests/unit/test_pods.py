"""The segment Pod manifest (pod executor): names, ownership, secrets, restricted security."""

from __future__ import annotations

from kflow.controller.mirror import RunRef
from kflow.controller.pods import RUN_LABEL, SEGMENT_LABEL, pod_name, segment_pod
from kflow.resources import PodTemplate

REF = RunRef(namespace="shop", name="Order_42.Very-Long-" + "x" * 80, uid="0123abcd-ffff-4444")


def test_pod_names_are_deterministic_dns_labels() -> None:
    name = pod_name(REF, 3)
    assert name == pod_name(REF, 3) != pod_name(REF, 4)
    assert len(name) <= 63 and name.endswith("-0123abcd-s3")
    assert name == name.lower() and "_" not in name and "." not in name


def test_segment_pod_is_restricted_owned_and_gets_the_dsn_from_a_secret() -> None:
    template = PodTemplate.model_validate(
        {"image": "registry.example/orders:1.4", "env": [{"name": "REGION", "value": "eu"}],
         "resources": {"limits": {"memory": "256Mi"}}, "serviceAccountName": "orders"}
    )  # fmt: skip
    pod = segment_pod(
        REF, segment=2, template=template, dsn_secret="kflow-db", schema="kflow",
        modules=["orders.workflows"],
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
