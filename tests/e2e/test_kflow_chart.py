"""The kflow Helm chart on the local control plane: lint, server-side validation, and a
real install whose operator runs as a Pod (on the node stand-in) and completes a run."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kflow.dev.postgres import free_port
from tests.e2e.conftest import Harness, wait_for
from tests.e2e.operator_env import ROOT

CHART = ROOT / "helm" / "kflow"
RELEASE = "kflow"
CRDS = ("workflowdefinitions.kflow.io", "workflowruns.kflow.io")
# A CA certificate (any will do for the API server's validation), base64 as in values.
_CA = base64.b64encode(
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "/dev/null", "-subj", "/CN=kflow-test-ca", "-days", "1"],
        check=True, capture_output=True,
    ).stdout
).decode()  # fmt: skip


def test_the_chart_lints_and_refuses_misspelt_values(harness: Harness) -> None:
    harness.run("helm", "lint", "--strict", CHART)
    typo = harness.run("helm", "lint", CHART, "--set", "operator.concurency=3", check=False)
    assert typo.returncode != 0 and "concurency is not allowed" in typo.stdout
    external = harness.run(
        "helm", "template", "x", CHART, "--set", "postgresql.mode=external", check=False
    )
    assert external.returncode != 0 and "postgresql.existingSecret" in external.stderr


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["rbac.clusterWide=true", "webhook.enabled=true", "networkPolicy.enabled=true"],
        [
            "postgresql.mode=external",
            "postgresql.existingSecret=db",
            "metrics.enabled=false",
            "operator.runTtlSeconds=86400",
        ],
        [f"rbac.watchNamespaces={{default,{'{ns}'}}}", "runner.serviceAccount.create=false"],
        [
            "operator.replicas=2",
            "postgresql.existingSecret=mine",
            "commonLabels.team=a",
            "imagePullSecrets[0]=regcred",
            "operator.podSecurityContext.runAsUser=null",
            "operator.serviceAccount.annotations.role=r",
            "webhook.enabled=true",
            "webhook.certificate.source=existingSecret",
            "webhook.certificate.existingSecret=t",
            f"webhook.certificate.caBundle={_CA}",
            "webhook.failurePolicy=Fail",
        ],
    ],
    ids=[
        "defaults",
        "cluster-wide-webhook-netpol",
        "external-db",
        "two-namespaces",
        "gitops-standby-options",
    ],
)
def test_the_rendered_chart_is_valid_for_the_api_server(
    harness: Harness, namespace: str, values: list[str], tmp_path: Path
) -> None:
    sets = [arg for v in values for arg in ("--set", v.replace("{ns}", namespace))]
    # The test Pod is a hook (helm test), and --kube-version picks the PDB's API version.
    rendered = harness.run("helm", "template", RELEASE, CHART, "-n", namespace, *sets,
                           "--skip-tests", "--kube-version", "1.20.2").stdout  # fmt: skip
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    # No -n: every object names its namespace (a Role goes to each watched namespace).
    applied = harness.run("kubectl", "apply", "--dry-run=server", "-f", path)
    kinds = {line.split("/")[0] for line in applied.stdout.splitlines()}
    assert {"deployment.apps", "customresourcedefinition.apiextensions.k8s.io"} <= kinds
    envs = [
        e
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
    ]
    ttl = [e["value"] for e in envs if e["name"] == "KFLOW_RUN_TTL"]
    assert ttl == (["86400"] if "operator.runTtlSeconds=86400" in values else [])
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in pod["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
                assert sc["capabilities"] == {"drop": ["ALL"]}


def _adopt_crds(harness: Harness, namespace: str) -> None:
    """CRDs applied with kubectl before (by other tests, or a user upgrading to the
    chart) are handed to the release, as docs/operations.md tells users to do."""
    for crd in CRDS:
        if harness.run("kubectl", "get", "crd", crd, check=False).returncode != 0:
            continue
        harness.run("kubectl", "label", "--overwrite", "crd", crd,
                    "app.kubernetes.io/managed-by=Helm")  # fmt: skip
        harness.run("kubectl", "annotate", "--overwrite", "crd", crd,
                    f"meta.helm.sh/release-name={RELEASE}",
                    f"meta.helm.sh/release-namespace={namespace}")  # fmt: skip


def _label_namespace(harness: Harness, namespace: str) -> None:
    """The label Kubernetes 1.21+ puts on every namespace (the webhook's namespaceSelector
    matches it); the local control plane is 1.20."""
    harness.run("kubectl", "label", "--overwrite", "namespace", namespace,
                f"kubernetes.io/metadata.name={namespace}")  # fmt: skip


def _values(tmp_path: Path, name: str, values: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(values))
    return path


def _operator_values(modules: list[str]) -> dict[str, Any]:
    health = free_port()
    return {
        "workflowModules": modules, "healthPort": health, "metricsPort": free_port(),
        # The node stand-in runs no images: the Pod's Python is this checkout's.
        "extraEnv": [{"name": "PYTHONPATH", "value": str(ROOT)}],
    }  # fmt: skip


@pytest.mark.timeout(300)
def test_install_run_upgrade_uninstall(
    harness: Harness, api: client.ApiClient, namespace: str, pg_dsn: str, tmp_path: Path
) -> None:
    harness.run("kubectl", "create", "secret", "generic", "orders-db", "-n", namespace,
                f"--from-literal=dsn={pg_dsn}")  # fmt: skip
    _adopt_crds(harness, namespace)
    _label_namespace(harness, namespace)
    operator = _operator_values(["examples.orders.workflow"])
    values = {
        "postgresql": {"mode": "external", "existingSecret": "orders-db",
                       "schema": f"kflow_chart_{uuid.uuid4().hex[:8]}"},
        "operator": operator,
        # The API server calls it at its Service, with the chart's certificate: the node
        # stand-in routes the Service to the operator Pod (kflow.dev.cluster.network).
        "webhook": {"enabled": True, "port": free_port()},
        # No cluster DNS here: the test Pod reaches the operator on the host's network.
        "tests": {"operatorUrl": f"http://127.0.0.1:{operator['healthPort']}/readyz"},
    }  # fmt: skip
    values_file = _values(tmp_path, "values", values)
    install = harness.run("helm", "install", RELEASE, CHART, "-n", namespace, "-f", values_file,
                          "--wait", "--timeout", "120s", timeout=150)  # fmt: skip
    assert "kubectl kflow describe" in install.stdout  # NOTES.txt tells what to do next

    core = client.CoreV1Api(api)
    selector = "app.kubernetes.io/component=operator"
    (pod,) = core.list_namespaced_pod(namespace, label_selector=selector).items
    assert pod.spec.service_account_name == f"{RELEASE}-operator"
    # The webhook refuses input that does not fit the workflow's model, naming the field.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun",
        "metadata": {"name": "bad-order"},
        "spec": {"workflow": "order-fulfilment", "input": {"id": "o-1", "sku": "book"}},
    }))  # fmt: skip
    _assert_refused(harness, namespace, bad)
    harness.run("kubectl", "apply", "-n", namespace, "-f", ROOT / "examples/orders/run.yaml")
    wait_for(lambda: _phase(harness, namespace, "order-42") == "Waiting", timeout=60,
             what="the order to wait for its payment")  # fmt: skip
    payment = 'event.kflow.io/payment-confirmed={"ref": "ch_1", "amount_cents": 2400}'
    harness.run("kubectl", "annotate", "-n", namespace, "wfr/order-42", payment)
    wait_for(lambda: _phase(harness, namespace, "order-42") == "Completed", timeout=60,
             what="the order to complete")  # fmt: skip

    # `helm test`: its Pod finds the operator ready and the database answering.
    tested = harness.run("helm", "test", RELEASE, "-n", namespace, "--timeout", "60s",
                         timeout=90)  # fmt: skip
    assert "Phase:          Succeeded" in tested.stdout, tested.stdout

    _second_release(harness, namespace, pg_dsn, bad, tmp_path)
    assert _phase(harness, namespace, "order-42") == "Completed"  # the first is untouched

    # helm upgrade changes a CRD (Helm never upgrades a chart's crds/ folder; ours are
    # templates), and a new webhook certificate restarts the operator (its checksum).
    changed = tmp_path / "kflow"
    shutil.copytree(CHART, changed)
    crd_file = changed / "files/crds/workflowruns.kflow.io.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    columns.append({"name": "Run", "type": "string", "jsonPath": ".status.runId"})
    crd_file.write_text(yaml.safe_dump(crd))
    harness.run("kubectl", "delete", "secret", "-n", namespace, f"{RELEASE}-webhook-cert")
    harness.run("helm", "upgrade", RELEASE, changed, "-n", namespace, "-f", values_file,
                "--wait", "--timeout", "120s", timeout=150)  # fmt: skip
    live = json.loads(harness.run("kubectl", "get", "crd", CRDS[1], "-o", "json").stdout)
    names = [c["name"] for c in live["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert "Run" in names
    wait_for(lambda: [p.metadata.uid for p in core.list_namespaced_pod(
        namespace, label_selector=selector).items if not p.metadata.deletion_timestamp]
        not in ([], [pod.metadata.uid]), timeout=60, what="a new operator Pod")  # fmt: skip
    _assert_refused(harness, namespace, bad)  # with the new certificate

    # helm uninstall leaves nothing of the release but the CRDs (kept: they hold the runs).
    harness.run("helm", "uninstall", RELEASE, "-n", namespace, "--wait", timeout=120)
    instance = f"app.kubernetes.io/instance={RELEASE}"
    for kind in ("deployments", "pods", "services", "secrets", "serviceaccounts", "roles",
                 "rolebindings", "statefulsets", "networkpolicies"):  # fmt: skip
        listed = ("kubectl", "get", kind, "-n", namespace, "-l", instance, "-o", "name")
        wait_for(lambda a=listed: not harness.run(*a).stdout.strip(), timeout=60,
                 what=f"the release's {kind} to go")  # fmt: skip
    for kind in ("clusterroles", "clusterrolebindings", "validatingwebhookconfigurations"):
        assert not harness.run("kubectl", "get", kind, "-l", instance, "-o", "name").stdout.strip()
    for crd_name in CRDS:
        harness.run("kubectl", "get", "crd", crd_name)
    assert _phase(harness, namespace, "order-42") == "Completed"  # the runs are still there
    # Leave the CRDs as the chart has them, for the tests after this one: the API server
    # serves the new printer columns a moment after the CRD changes.
    harness.run("kubectl", "apply", "-f", CHART / "files" / "crds")
    wait_for(
        lambda: "RUN" not in harness.run("kubectl", "get", "wfr", "-n", namespace).stdout,
        what="the CRD's printer columns as the chart has them",
    )


def _second_release(
    harness: Harness, first_namespace: str, pg_dsn: str, bad: Path, tmp_path: Path
) -> None:
    """A second release in another namespace: the CRDs stay the first's (crds.install=false),
    its operator runs its namespace's runs, and the first's webhook does not see them."""
    namespace = f"{first_namespace}-b"
    harness.run("kubectl", "create", "namespace", namespace)
    try:
        _label_namespace(harness, namespace)
        harness.run("kubectl", "create", "secret", "generic", "db", "-n", namespace,
                    f"--from-literal=dsn={pg_dsn}")  # fmt: skip
        values = {
            "postgresql": {"mode": "external", "existingSecret": "db",
                           "schema": f"kflow_chart_{uuid.uuid4().hex[:8]}"},
            "operator": _operator_values(["tests.e2e.workflows"]),
            "tests": {"enabled": False},
        }  # fmt: skip
        values_file = _values(tmp_path, "second", values)
        taken = harness.run("helm", "install", "second", CHART, "-n", namespace, "-f",
                            values_file, check=False, timeout=90)  # fmt: skip
        assert taken.returncode != 0 and "crds.install=false" in taken.stderr
        assert f"belongs to release {RELEASE} in namespace {first_namespace}" in taken.stderr
        harness.run("helm", "install", "second", CHART, "-n", namespace, "-f", values_file,
                    "--set", "crds.install=false", "--wait", "--timeout", "120s",
                    timeout=150)  # fmt: skip
        log = tmp_path / "second.log"
        run = tmp_path / "steps.yaml"
        run.write_text(yaml.safe_dump({
            "apiVersion": "kflow.io/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": "two-steps"},
            "spec": {"workflow": "steps", "input": {"log": str(log), "steps": 2}},
        }))  # fmt: skip
        harness.run("kubectl", "apply", "-n", namespace, "-f", run)
        wait_for(lambda: _phase(harness, namespace, "two-steps") == "Completed", timeout=60,
                 what="the second release's run to complete")  # fmt: skip
        assert log.read_text().split() == ["work-0", "work-1"]
        # The first release's webhook would refuse this input: it never sees this namespace.
        harness.run("kubectl", "apply", "-n", namespace, "-f", bad)
        harness.run("kubectl", "delete", "-n", namespace, "-f", bad, "--timeout", "30s")
        harness.run("helm", "uninstall", "second", "-n", namespace, "--wait", timeout=120)
    finally:
        harness.run("kubectl", "delete", "namespace", namespace, "--wait=false", check=False)


def _assert_refused(harness: Harness, namespace: str, manifest: Path) -> None:
    refused = wait_for(
        lambda: _refused(harness, namespace, manifest), timeout=60, interval=1.0,
        what="the chart's webhook to answer (its failure policy lets runs through until then)",
    )  # fmt: skip
    assert 'admission webhook "input.validate.kflow.io" denied' in refused
    assert "spec.input" in refused and "quantity" in refused


def _refused(harness: Harness, namespace: str, manifest: Path) -> str | None:
    """The API server's refusal of ``manifest``; None (and the object deleted again) if it
    was let through: the webhook's failure policy is Ignore while it cannot be reached."""
    applied = harness.run("kubectl", "apply", "-n", namespace, "-f", manifest, check=False)
    if applied.returncode != 0:
        return applied.stderr
    harness.run("kubectl", "delete", "-n", namespace, "-f", manifest, "--wait=false")
    return None


def _phase(harness: Harness, namespace: str, name: str) -> str:
    return harness.run(
        "kubectl", "get", "wfr", name, "-n", namespace, "-o", "jsonpath={.status.phase}",
        check=False,
    ).stdout  # fmt: skip
