"""The node stand-in runs Pods as local processes and reports back as a kubelet would."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.e2e.conftest import Harness, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pod(name: str, code: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "ignored", "command": ["python", "-c", code]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }  # fmt: skip


def _phase(core: client.CoreV1Api, namespace: str, name: str, *phases: str) -> Any:
    def check() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_for(check, timeout=60, what=f"pod {name} to reach {phases}")


def test_exit_code_and_logs_are_reported(
    harness: Harness, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    code = "import sys; print('to the log'); sys.exit(3)"
    core.create_namespaced_pod(namespace, _pod("fails", code))
    pod = _phase(core, namespace, "fails", "Failed")
    assert pod.spec.node_name == "kflow-node-stand-in"  # bound by the real scheduler
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.reason == "Error"
    log_file = Path(pod.status.message.split("main=")[1].split(";")[0])
    assert log_file.read_text() == "to the log\n"
    logs = harness.run("kubectl", "logs", "fails", "-n", namespace)  # via the log endpoint
    assert logs.stdout == "to the log\n"


def test_kubectl_logs_follows_a_running_container(
    harness: Harness, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    code = "import time\nfor i in range(3):\n    print('line', i)\n    time.sleep(0.5)\n"
    core.create_namespaced_pod(namespace, _pod("talker", code))
    _phase(core, namespace, "talker", "Running", "Succeeded")
    followed = harness.run("kubectl", "logs", "-f", "talker", "-n", namespace)
    assert followed.stdout == "line 0\nline 1\nline 2\n"  # returned when the process ended
    tail = harness.run("kubectl", "logs", "--tail=1", "talker", "-n", namespace)
    assert tail.stdout == "line 2\n"


def test_env_secrets_downward_api_and_postgres(
    api: client.ApiClient, namespace: str, pg_dsn: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="db"), string_data={"dsn": pg_dsn}))  # fmt: skip
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="cfg"), data={"mode": "e2e"}))  # fmt: skip
    code = (
        "import asyncio, json, os, sys, asyncpg\n"
        "async def main():\n"
        "    conn = await asyncpg.connect(os.environ['DSN'])\n"
        "    one = await conn.fetchval('select 1')\n"
        "    await conn.close()\n"
        "    keys = ['POD_NAME', 'POD_NS', 'POD_UID', 'SA', 'NODE', 'IP', 'MODE', 'GREETING',\n"
        "            'CFG_mode', 'DB_dsn']\n"
        "    print(json.dumps({'one': one, 'python': sys.executable,\n"
        "                      **{k: os.environ[k] for k in keys}}))\n"
        "asyncio.run(main())\n"
    )

    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    env = [
        {"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "dsn"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "POD_NS", "valueFrom": field("metadata.namespace")},
        {"name": "POD_UID", "valueFrom": field("metadata.uid")},
        {"name": "SA", "valueFrom": field("spec.serviceAccountName")},
        {"name": "NODE", "valueFrom": field("spec.nodeName")},
        {"name": "IP", "valueFrom": field("status.podIP")},
        {"name": "GREETING", "value": "hello $(POD_NAME) in $(MODE)"},
    ]
    env_from = [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                {"secretRef": {"name": "db"}, "prefix": "DB_"}]  # fmt: skip
    container = {"env": env, "envFrom": env_from}
    core.create_namespaced_pod(namespace, _pod("env", code, container=container))
    pod = _phase(core, namespace, "env", "Succeeded", "Failed")
    log_file = Path(pod.status.message.split("main=")[1].split(";")[0])
    assert pod.status.phase == "Succeeded", log_file.read_text()
    seen = json.loads(log_file.read_text())
    assert seen == {
        "one": 1, "python": seen["python"], "POD_NAME": "env", "POD_NS": namespace,
        "POD_UID": pod.metadata.uid, "SA": "default", "NODE": "kflow-node-stand-in",
        "IP": "127.0.0.1", "MODE": "e2e", "GREETING": "hello env in e2e",
        "CFG_mode": "e2e", "DB_dsn": pg_dsn,
    }  # fmt: skip
    assert Path(seen["python"]).parent == Path(sys.executable).parent  # the project's venv


def test_deleting_a_pod_stops_its_process(
    harness: Harness, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    # The second pod ignores SIGTERM: it is killed when its grace period ends.
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    core.create_namespaced_pod(namespace, _pod("sleeper", "import time; time.sleep(600)"))
    core.create_namespaced_pod(namespace, _pod("stubborn", stubborn,
                                               terminationGracePeriodSeconds=2))  # fmt: skip
    for name in ("sleeper", "stubborn"):
        _phase(core, namespace, name, "Running")
    pids: list[int] = []
    for name in ("sleeper", "stubborn"):
        pids += wait_for(lambda n=name: harness.node.pids(namespace, n))
    assert all(_alive(pid) for pid in pids)

    started = time.monotonic()
    harness.run("kubectl", "delete", "pod", "sleeper", "stubborn", "-n", namespace,
                "--wait=true", "--timeout=60s")  # fmt: skip
    elapsed = time.monotonic() - started
    assert not any(_alive(pid) for pid in pids)
    assert elapsed >= 2  # the stubborn one used its grace period before SIGKILL
    remaining = core.list_namespaced_pod(namespace).items
    assert [p.metadata.name for p in remaining] == []


def test_active_deadline_fails_the_pod(
    harness: Harness, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, _pod("late", "import time; time.sleep(600)",
                                               activeDeadlineSeconds=2))  # fmt: skip
    _phase(core, namespace, "late", "Running")
    pids = wait_for(lambda: harness.node.pids(namespace, "late"))
    pod = _phase(core, namespace, "late", "Failed")
    assert pod.status.reason == "DeadlineExceeded"
    assert not any(_alive(pid) for pid in pids)


def test_pod_gets_service_account_credentials(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    code = (
        "import os, pathlib\n"
        "from kubernetes import client, config\n"
        "config.load_config()\n"
        "try:\n"
        "    client.CoreV1Api().list_namespaced_secret(os.environ['NS'])\n"
        "except client.ApiException as e:\n"
        "    print('denied', e.status)\n"
        "sa = pathlib.Path(os.environ['KUBECONFIG']).parent / 'serviceaccount'\n"
        "print((sa / 'namespace').read_text(), os.environ['KUBERNETES_SERVICE_HOST'])\n"
    )
    env = [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    core.create_namespaced_pod(namespace, _pod("who", code, container={"env": env}))
    pod = _phase(core, namespace, "who", "Succeeded", "Failed")
    out = Path(pod.status.message.split("main=")[1].split(";")[0]).read_text()
    assert pod.status.phase == "Succeeded", out
    # The default service account may not list secrets: the request ran as it, not as admin.
    assert out.splitlines() == ["denied 403", f"{namespace} 127.0.0.1"]


def test_init_containers_and_restart_on_failure(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    # HOME is the Pod's directory, shared by its containers (there are no volumes).
    init = "import pathlib; (pathlib.Path.home() / 'seed').write_text('from init')"
    flaky = (
        "import pathlib, sys\n"
        "runs = pathlib.Path.home() / 'runs'\n"
        "runs.write_text(runs.read_text() + 'x' if runs.exists() else 'x')\n"
        "print((pathlib.Path.home() / 'seed').read_text(), len(runs.read_text()))\n"
        "sys.exit(1 if len(runs.read_text()) == 1 else 0)\n"  # fails once, then succeeds
    )
    pod = _pod("flaky", flaky, restartPolicy="OnFailure", initContainers=[
        {"name": "seed", "image": "ignored", "command": ["python", "-c", init]}])  # fmt: skip
    core.create_namespaced_pod(namespace, pod)
    done = _phase(core, namespace, "flaky", "Succeeded", "Failed")
    assert done.status.phase == "Succeeded"
    (main,) = done.status.container_statuses
    assert main.restart_count == 1  # after a kubelet's 10 s back-off
    assert main.last_state.terminated.exit_code == 1
    assert done.status.init_container_statuses[0].state.terminated.exit_code == 0
    log_file = Path(done.status.message.split("main=")[1].split(";")[0])
    assert log_file.read_text() == "from init 1\nfrom init 2\n"


def test_secret_and_configmap_volumes_are_files_at_their_mount_paths(
    harness: Harness, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds"), string_data={"token": "s3cret"}))  # fmt: skip
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="conf"), data={"a.txt": "alpha"}))  # fmt: skip
    # The process is told the mount paths (env and args); the stand-in rewrites them.
    code = (
        "import os, sys; "
        "print(open(os.environ['TOKEN_FILE']).read(), open(sys.argv[1]).read(), "
        "oct(os.stat(os.environ['TOKEN_FILE']).st_mode & 0o777))"
    )
    pod = _pod("mounts", code, container={
        "args": ["/etc/conf/renamed.txt"],
        "env": [{"name": "TOKEN_FILE", "value": "/var/run/creds/token"}],
        "volumeMounts": [{"name": "creds", "mountPath": "/var/run/creds", "readOnly": True},
                         {"name": "conf", "mountPath": "/etc/conf"}],
    }, volumes=[
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "conf", "configMap": {"name": "conf",
                                       "items": [{"key": "a.txt", "path": "renamed.txt"}]}},
    ])  # fmt: skip
    core.create_namespaced_pod(namespace, pod)
    _phase(core, namespace, "mounts", "Succeeded")
    logs = harness.run("kubectl", "logs", "mounts", "-n", namespace)
    assert logs.stdout == "s3cret alpha 0o600\n"
