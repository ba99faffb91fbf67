"""The kflow chart's renders (``helm template``, no cluster): identical renders for GitOps,
the certificate and database sources, names, the options teams expect, CloudNativePG."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Harness
from tests.e2e.operator_env import ROOT

CHART = ROOT / "helm" / "kflow"
Doc = dict[str, Any]


def _ca_bundle() -> str:
    pem = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "/dev/null", "-subj", "/CN=kflow-test-ca", "-days", "1"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return base64.b64encode(pem).decode()


GITOPS_CERT_MANAGER = {
    "postgresql": {"existingSecret": "kflow-db"},
    "webhook": {"enabled": True, "certificate": {"source": "certManager"}},
}


def _gitops_existing_cert() -> dict[str, Any]:
    return {
        "postgresql": {"existingSecret": "kflow-db"},
        "webhook": {"enabled": True, "certificate": {
            "source": "existingSecret", "existingSecret": "kflow-webhook-tls",
            "caBundle": _ca_bundle()}},
    }  # fmt: skip


def template(
    harness: Harness, tmp_path: Path, values: dict[str, Any] | None = None, *args: str,
    release: str = "kflow", namespace: str = "kflow", check: bool = True,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    path = tmp_path / f"values-{hashlib.sha1(json.dumps(values).encode()).hexdigest()[:8]}.json"
    path.write_text(json.dumps(values or {}))
    return harness.run("helm", "template", release, CHART, "-n", namespace, "-f", path, *args,
                       check=check)  # fmt: skip


def docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def one(rendered: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in rendered if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]  # fmt: skip
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def pods(rendered: list[Doc]) -> list[Doc]:
    """Every Pod spec the chart renders (Deployments, StatefulSets, the test Pod)."""
    specs = [d["spec"]["template"]["spec"] for d in rendered
             if d["kind"] in ("Deployment", "StatefulSet")]  # fmt: skip
    return specs + [d["spec"] for d in rendered if d["kind"] == "Pod"]


def env(pod: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}


@pytest.mark.parametrize("source", ["certManager", "existingSecret"])
def test_gitops_renders_are_identical_and_generated_ones_are_not(
    harness: Harness, tmp_path: Path, source: str
) -> None:
    values = GITOPS_CERT_MANAGER if source == "certManager" else _gitops_existing_cert()
    first, second = (template(harness, tmp_path, values).stdout for _ in range(2))
    assert first == second  # what Argo CD and Flux render is what is running
    rendered = docs(first)
    assert not [d for d in rendered if d["kind"] == "Secret"]  # the chart makes none
    deployment = one(rendered, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/secrets" not in annotations  # nothing rendered to follow
    # The default (generated) secrets differ on each render without a cluster: documented.
    defaults = [template(harness, tmp_path, {"webhook": {"enabled": True}}).stdout
                for _ in range(2)]  # fmt: skip
    assert defaults[0] != defaults[1]


def test_generated_secrets_are_one_per_render_and_checksummed(
    harness: Harness, tmp_path: Path
) -> None:
    rendered = docs(template(harness, tmp_path, {"webhook": {"enabled": True}}).stdout)
    db = one(rendered, "Secret", "kflow-db")
    cert = one(rendered, "Secret", "kflow-webhook-cert")
    password = base64.b64decode(db["data"]["password"]).decode()
    dsn = base64.b64decode(db["data"]["dsn"]).decode()
    assert dsn == f"postgresql://kflow:{password}@kflow-postgresql.kflow.svc:5432/kflow"
    webhook = one(rendered, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == cert["data"]["ca.crt"]
    # The operator's Pod template follows the Secrets it reads: a new one restarts it.
    generated = {"password": password, **{k: cert["data"][k] for k in
                                          ("ca.crt", "tls.crt", "tls.key")}}  # fmt: skip
    expected = hashlib.sha256(json.dumps(generated, sort_keys=True, separators=(",", ":"))
                              .encode()).hexdigest()  # fmt: skip
    template_meta = one(rendered, "Deployment")["spec"]["template"]["metadata"]
    assert template_meta["annotations"]["checksum/secrets"] == expected


def test_cert_manager_certificate_and_ca_injection(harness: Harness, tmp_path: Path) -> None:
    """The shape validated against cert-manager v1.21.1's CRDs (docs/operations.md)."""
    rendered = docs(template(harness, tmp_path, GITOPS_CERT_MANAGER).stdout)
    vwc = one(rendered, "ValidatingWebhookConfiguration", "kflow.kflow")
    assert vwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kflow/kflow-webhook"
    }
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]  # cainjector writes it
    assert one(rendered, "Issuer", "kflow-selfsigned")["spec"] == {"selfSigned": {}}
    ca = one(rendered, "Certificate", "kflow-webhook-ca")["spec"]
    assert ca["isCA"] is True and ca["secretName"] == "kflow-webhook-ca"
    assert ca["issuerRef"] == {"name": "kflow-selfsigned", "kind": "Issuer",
                               "group": "cert-manager.io"}  # fmt: skip
    assert one(rendered, "Issuer", "kflow-webhook-ca")["spec"] == {
        "ca": {"secretName": "kflow-webhook-ca"}
    }
    leaf = one(rendered, "Certificate", "kflow-webhook")["spec"]
    assert leaf["secretName"] == "kflow-webhook-cert"  # what the operator mounts
    assert leaf["dnsNames"] == ["kflow-webhook", "kflow-webhook.kflow", "kflow-webhook.kflow.svc"]
    assert leaf["issuerRef"]["name"] == "kflow-webhook-ca"
    assert set(leaf) <= {"secretName", "secretTemplate", "duration", "renewBefore", "dnsNames",
                         "privateKey", "issuerRef"}  # fmt: skip
    mounted = one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-cert", "secret": {"secretName": "kflow-webhook-cert"}} in mounted
    # A user's issuer: no CA of the chart's.
    issuer = {"name": "corp", "kind": "ClusterIssuer"}
    certificate = {"source": "certManager", "issuerRef": issuer}
    theirs = {**GITOPS_CERT_MANAGER, "webhook": {"enabled": True, "certificate": certificate}}
    rendered = docs(template(harness, tmp_path, theirs).stdout)
    assert not [d for d in rendered if d["kind"] == "Issuer"]
    assert one(rendered, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}  # fmt: skip


def test_existing_certificate_secret_and_failure_policy(harness: Harness, tmp_path: Path) -> None:
    values = _gitops_existing_cert()
    values["webhook"]["failurePolicy"] = "Fail"
    rendered = docs(template(harness, tmp_path, values).stdout)
    webhook = one(rendered, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == values["webhook"]["certificate"]["caBundle"]
    assert webhook["failurePolicy"] == "Fail"
    volumes = one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-cert", "secret": {"secretName": "kflow-webhook-tls"}} in volumes
    values["webhook"]["certificate"]["caBundle"] = base64.b64encode(b"not a cert").decode()
    bad = template(harness, tmp_path, values, check=False)
    assert bad.returncode != 0 and "webhook.certificate.caBundle" in bad.stderr


def test_a_namespaced_webhook_sees_only_its_namespaces(harness: Harness, tmp_path: Path) -> None:
    values = {"webhook": {"enabled": True}, "rbac": {"watchNamespaces": ["team-a", "team-b"]}}
    webhook = one(docs(template(harness, tmp_path, values).stdout),
                  "ValidatingWebhookConfiguration")["webhooks"][0]  # fmt: skip
    expression = {"key": "kubernetes.io/metadata.name", "operator": "In",
                  "values": ["team-a", "team-b"]}  # fmt: skip
    assert webhook["namespaceSelector"] == {"matchExpressions": [expression]}
    wide = {"webhook": {"enabled": True}, "rbac": {"clusterWide": True}}
    webhook = one(docs(template(harness, tmp_path, wide).stdout),
                  "ValidatingWebhookConfiguration")["webhooks"][0]  # fmt: skip
    assert "namespaceSelector" not in webhook


def test_two_releases_share_no_cluster_scoped_name(harness: Harness, tmp_path: Path) -> None:
    """Names joined with '-' collide ('kflow' in 'a-b' and 'kflow-a' in 'b'); a '.' cannot
    be in a release's names nor in a namespace's."""
    values = {"webhook": {"enabled": True}, "rbac": {"clusterWide": True}}
    names: list[set[tuple[str, str]]] = []
    for release, namespace in (("kflow", "a-b"), ("kflow-a", "b")):
        rendered = docs(template(harness, tmp_path, values, "--set", "crds.install=false",
                                 release=release, namespace=namespace).stdout)  # fmt: skip
        cluster_scoped = {(d["kind"], d["metadata"]["name"]) for d in rendered
                          if "namespace" not in d["metadata"]}  # fmt: skip
        assert {k for k, _ in cluster_scoped} == {
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingWebhookConfiguration",
        }
        names.append(cluster_scoped)
    assert not names[0] & names[1]


def test_names_overrides_and_their_limits(harness: Harness, tmp_path: Path) -> None:
    rendered = docs(template(harness, tmp_path, {"nameOverride": "wf"}, release="team").stdout)
    assert one(rendered, "StatefulSet")["metadata"]["name"] == "team-wf-postgresql"
    assert one(rendered, "Deployment")["metadata"]["labels"]["app.kubernetes.io/name"] == "wf"
    rendered = docs(template(harness, tmp_path, {"fullnameOverride": "orders"}).stdout)
    assert one(rendered, "Deployment")["metadata"]["name"] == "orders-operator"
    # 41 characters + "-postgresql" is a StatefulSet's 52; one more fails, naming the value.
    ok = template(harness, tmp_path, {"fullnameOverride": "a" * 41})
    assert "StatefulSet" in ok.stdout
    too_long = template(harness, tmp_path, {"fullnameOverride": "a" * 42}, check=False)
    assert too_long.returncode != 0
    assert "fullnameOverride" in too_long.stderr and "at most 41" in too_long.stderr
    cnpg = {"fullnameOverride": "a" * 40, "postgresql": {"mode": "cloudnativepg"}}
    too_long = template(harness, tmp_path, cnpg, check=False)
    assert too_long.returncode != 0 and "at most 39" in too_long.stderr  # CNPG's 50
    external = {"fullnameOverride": "a" * 50,
                "postgresql": {"mode": "external", "existingSecret": "db"}}  # fmt: skip
    assert template(harness, tmp_path, external).returncode == 0  # Services' 63 only


def test_options_teams_expect(harness: Harness, tmp_path: Path) -> None:
    values = {
        "commonLabels": {"team": "payments", "cost-center": "42"},
        "imagePullSecrets": ["regcred", {"name": "mirror"}],
        "operator": {
            "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "kflow@p.iam"}},
            # OpenShift assigns the uid: null removes the chart's.
            "podSecurityContext": {"runAsUser": None, "runAsGroup": None},
            "priorityClassName": "platform",
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                           "whenUnsatisfiable": "ScheduleAnyway"}],
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "envFrom": [{"secretRef": {"name": "extra"}}],
            "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
            "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca"}],
        },
        "runner": {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:r"}}},
        "postgresql": {"podSecurityContext": {"runAsUser": None, "runAsGroup": None,
                                              "fsGroup": None}},
    }  # fmt: skip
    rendered = docs(template(harness, tmp_path, values).stdout)
    for d in rendered:
        labels = d["metadata"]["labels"]
        assert labels["team"] == "payments" and labels["cost-center"] == "42", d["kind"]
    for pod in pods(rendered):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    deployment = one(rendered, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "payments"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True,
                                      "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    assert pod["priorityClassName"] == "platform"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "zone"
    container = pod["containers"][0]
    assert json.loads(env(pod)["KFLOW_RUNNER_IMAGE_PULL_SECRETS"]) == ["regcred", "mirror"]
    assert env(pod)["TZ"] == "UTC" and container["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert {"name": "ca", "mountPath": "/etc/corp-ca"} in container["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    accounts = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ServiceAccount"}
    assert accounts["kflow-operator"]["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "kflow@p.iam"
    }
    assert accounts["kflow-runner"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:r"
    }
    postgres = one(rendered, "StatefulSet")["spec"]
    assert "fsGroup" not in postgres["template"]["spec"]["securityContext"]
    # Stable labels on the claim template (immutable): not the version, not commonLabels.
    claim_labels = postgres["volumeClaimTemplates"][0]["metadata"]["labels"]
    assert set(claim_labels) == {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                                 "app.kubernetes.io/component"}  # fmt: skip
    reserved = template(harness, tmp_path, {"commonLabels": {"app.kubernetes.io/name": "x"}},
                        check=False)  # fmt: skip
    assert reserved.returncode != 0 and "commonLabels" in reserved.stderr


def test_probes_and_the_helm_test(harness: Harness, tmp_path: Path) -> None:
    rendered = docs(template(harness, tmp_path).stdout)
    container = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    test = one(rendered, "Pod", "kflow-test")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert env(test["spec"])["KFLOW_TEST_OPERATOR_URL"] == (
        "http://kflow-operator.kflow.svc:8080/readyz"
    )
    assert env(test["spec"])["KFLOW_DSN"] == {"secretKeyRef": {"name": "kflow-db", "key": "dsn"}}
    assert one(rendered, "Service", "kflow-operator")["spec"]["ports"][0]["name"] == "health"
    rendered = docs(template(harness, tmp_path, {"tests": {"enabled": False}}).stdout)
    assert not [d for d in rendered if d["kind"] == "Pod"]


def test_standby_replicas(harness: Harness, tmp_path: Path) -> None:
    one_replica = docs(template(harness, tmp_path).stdout)
    assert one(one_replica, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in one_replica if d["kind"] == "PodDisruptionBudget"]
    assert "KFLOW_LEADER_ELECTION" not in env(pods(one_replica)[0])
    values = {"operator": {"replicas": 2}}
    for kube, api in (("1.20.2", "policy/v1beta1"), ("1.29.0", "policy/v1")):
        rendered = docs(template(harness, tmp_path, values, "--kube-version", kube).stdout)
        pdb = one(rendered, "PodDisruptionBudget")
        assert pdb["apiVersion"] == api and pdb["spec"]["maxUnavailable"] == 1
    deployment = one(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    variables = env(deployment["spec"]["template"]["spec"])
    assert variables["KFLOW_LEADER_ELECTION"] == "true"
    assert variables["KFLOW_LEADER_NAMESPACE"] == "kflow"
    assert variables["KFLOW_LEADER_LEASE"] == "kflow-operator"
    assert variables["KFLOW_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    role = one(rendered, "Role", "kflow-operator-leader")
    assert role["metadata"]["namespace"] == "kflow"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["kflow-operator"], "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]  # fmt: skip
    binding = one(rendered, "RoleBinding", "kflow-operator-leader")
    assert binding["subjects"][0]["name"] == "kflow-operator"


# Every field path of the Cluster and ScheduledBackup the chart writes, as validated with
# `kubectl create --dry-run=server` against CloudNativePG v1.30.0's CRDs (docs/operations.md);
# a path ending in "*" is handed through from values as CNPG documents it.
CNPG_VALIDATED = {
    "Cluster": {
        "instances", "imageName", "imagePullSecrets[].name", "primaryUpdateStrategy",
        "inheritedMetadata.labels.*", "bootstrap.initdb.database", "bootstrap.initdb.owner",
        "postgresql.parameters.*", "storage.size", "storage.storageClass", "walStorage.*",
        "resources.*", "priorityClassName", "affinity.*", "topologySpreadConstraints*",
        "plugins*", "backup.*", "monitoring.*",
    },
    "ScheduledBackup": {"schedule", "backupOwnerReference", "cluster.name", "method",
                        "pluginConfiguration.*"},
}  # fmt: skip


def _paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {p for k, v in node.items() for p in _paths(v, f"{prefix}.{k}" if prefix else k)}
    if isinstance(node, list) and node:
        return {p for v in node for p in _paths(v, f"{prefix}[]")}
    return {prefix}


def _validated(path: str, allowed: set[str]) -> bool:
    return path in allowed or any(a.endswith("*") and path.startswith(a[:-1]) for a in allowed)


def test_cloudnativepg_cluster(harness: Harness, tmp_path: Path) -> None:
    values = {
        "commonLabels": {"team": "payments"},
        "imagePullSecrets": ["regcred"],
        "postgresql": {
            "mode": "cloudnativepg", "storage": "20Gi", "storageClass": "fast",
            "priorityClassName": "db",
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                           "whenUnsatisfiable": "ScheduleAnyway"}],
            "cloudnativepg": {
                "imageName": "ghcr.io/cloudnative-pg/postgresql:17.5",
                "parameters": {"max_connections": 200},
                "walStorage": {"size": "2Gi"},
                "plugins": [{"name": "barman-cloud.cloudnative-pg.io", "isWALArchiver": True,
                             "parameters": {"barmanObjectName": "kflow-store"}}],
                "backup": {"volumeSnapshot": {"className": "csi"}, "retentionPolicy": "30d"},
                "monitoring": {"enablePodMonitor": True},
                "scheduledBackup": {"schedule": "0 0 3 * * *", "pluginConfiguration": {
                    "name": "barman-cloud.cloudnative-pg.io"}},
            },
        },
    }  # fmt: skip
    rendered = docs(template(harness, tmp_path, values).stdout)
    cluster = one(rendered, "Cluster", "kflow-postgresql")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == 3 and spec["storage"] == {"size": "20Gi", "storageClass": "fast"}
    assert spec["bootstrap"] == {"initdb": {"database": "kflow", "owner": "kflow"}}
    assert spec["postgresql"]["parameters"] == {"max_connections": "200"}  # CNPG wants strings
    assert spec["inheritedMetadata"] == {"labels": {"team": "payments"}}
    for kind, allowed in CNPG_VALIDATED.items():
        unvalidated = {p for d in rendered if d["kind"] == kind for p in _paths(d["spec"])
                       if not _validated(p, allowed)}  # fmt: skip
        assert not unvalidated, f"{kind} fields not validated against CNPG's CRD: {unvalidated}"
    assert one(rendered, "ScheduledBackup")["spec"]["cluster"] == {"name": "kflow-postgresql"}
    # The operator, the segment Pods and the test read CNPG's app Secret.
    for pod in pods(rendered):
        assert env(pod)["KFLOW_DSN"] == {"secretKeyRef": {"name": "kflow-postgresql-app",
                                                          "key": "uri"}}  # fmt: skip
    variables = env(pods(rendered)[0])
    assert variables["KFLOW_RUNNER_DSN_SECRET"] == "kflow-postgresql-app"
    assert variables["KFLOW_RUNNER_DSN_KEY"] == "uri"
    assert not [d for d in rendered if d["kind"] in ("StatefulSet", "Secret")]
    both = {"postgresql": {"mode": "cloudnativepg", "existingSecret": "x"}}
    wrong = template(harness, tmp_path, both, check=False)
    assert wrong.returncode != 0 and "postgresql.existingSecret" in wrong.stderr


def test_database_secret_sources(harness: Harness, tmp_path: Path) -> None:
    mine = {"postgresql": {"existingSecret": "kflow-db-mine", "existingSecretKey": "url",
                           "existingSecretPasswordKey": "pw"}}  # fmt: skip
    rendered = docs(template(harness, tmp_path, mine).stdout)
    assert not [d for d in rendered if d["kind"] == "Secret"]
    postgres = env(one(rendered, "StatefulSet")["spec"]["template"]["spec"])
    assert postgres["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "kflow-db-mine",
                                                              "key": "pw"}}  # fmt: skip
    operator = env(one(rendered, "Deployment")["spec"]["template"]["spec"])
    assert operator["KFLOW_DSN"] == {"secretKeyRef": {"name": "kflow-db-mine", "key": "url"}}
    assert operator["KFLOW_RUNNER_DSN_SECRET"] == "kflow-db-mine"
    old = template(harness, tmp_path, {"postgresql": {"bundled": False}}, check=False)
    assert old.returncode != 0 and "postgresql.mode=external" in old.stderr
