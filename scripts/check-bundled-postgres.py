#!/usr/bin/env python3
"""Run the chart's bundled PostgreSQL as its manifest says, without a container runtime.

Renders the chart (``helm template``, extra arguments are passed on, e.g. ``--set``),
takes the PostgreSQL StatefulSet and the generated DSN Secret, and runs Debian's
PostgreSQL server binaries (the same major version as the chart's image) with the
manifest's settings, in a mount and network namespace of their own (``unshare``; needs
root, as CI and the dev machines are):

- the Pod's ``runAsUser``/``runAsGroup`` (a passwd entry ``postgres`` for that uid, as the
  image has for 999) and ``fsGroup`` (the volume's group, setgid, group-writable);
- a read-only root filesystem, with exactly the manifest's volume mounts writable at
  their paths: the PersistentVolumeClaim (a temp dir) and each emptyDir (mode 0777);
- ``PGDATA``, ``POSTGRES_USER``/``POSTGRES_DB`` and the password from the Secret;
- what the image's entrypoint does on an empty volume, step by step: create ``PGDATA``
  (0700), ``initdb`` with the user and password, a ``host all all all scram-sha-256``
  line in ``pg_hba.conf``, a socket-only server to create the database, then the server
  on ``*:<containerPort>``;
- the readiness probe's command, then a connection with the Secret's DSN as rendered
  (the Service's name resolves to 127.0.0.1 through the namespace's ``/etc/hosts``), a
  refused wrong password, and a write to the root filesystem that fails.

Not checked here: the image itself (its files, its entrypoint script, its
``postgresql.conf.sample``), the kubelet's real fsGroup handling, resource limits,
seccomp, dropped capabilities (the server runs without any anyway), and the Service.

    scripts/check-bundled-postgres.py [--set key=value ...]
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "kflow"


def find_helm() -> str:
    cached = Path(os.environ.get("KFLOW_CACHE_DIR", Path.home() / ".cache/kflow"))
    for candidate in (shutil.which("helm"), cached / "tools/bin/helm"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit("helm not found: run scripts/bootstrap-cluster.sh")


def find_pg_bindir() -> Path:
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not debian:
        sys.exit("PostgreSQL server binaries not found: run scripts/bootstrap.sh")
    return debian[-1].parent


def render(args: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [find_helm(), "template", "kflow", str(CHART), "-n", "kflow", *args],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class Manifest:
    """What the StatefulSet and the Secret say, checked for what a kubelet would need."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
        pod = sts["spec"]["template"]["spec"]
        (self.container,) = pod["containers"]
        psc, csc = pod.get("securityContext") or {}, self.container.get("securityContext") or {}
        self.uid = int(csc.get("runAsUser", psc.get("runAsUser", 0)))
        self.gid = int(csc.get("runAsGroup", psc.get("runAsGroup", self.uid)))
        self.fs_group = psc.get("fsGroup")
        assert self.uid != 0, "runAsUser: PostgreSQL refuses to run as root"
        assert csc.get("runAsNonRoot") or psc.get("runAsNonRoot"), "runAsNonRoot is not set"
        assert csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not set"
        env = {e["name"]: e for e in self.container["env"]}
        self.pgdata = env["PGDATA"]["value"]
        self.user, self.db = env["POSTGRES_USER"]["value"], env["POSTGRES_DB"]["value"]
        ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
        secrets = [d for d in docs if d["kind"] == "Secret"
                   and d["metadata"]["name"] == ref["name"]
                   and d["metadata"]["namespace"] == sts["metadata"]["namespace"]]  # fmt: skip
        assert secrets, f"Secret {ref['name']} is not rendered (use the generated password)"
        data = {k: base64.b64decode(v).decode() for k, v in secrets[0]["data"].items()}
        self.password, self.dsn = data[ref["key"]], data["dsn"]
        self.port = int(self.container["ports"][0]["containerPort"])
        self.probe = self.container["readinessProbe"]["exec"]["command"]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates") or []}
        self.mounts: dict[str, str] = {}  # mount path -> "pvc" | "emptyDir"
        for m in self.container["volumeMounts"]:
            if m["name"] in claims:
                self.mounts[m["mountPath"]] = "pvc"
            elif "emptyDir" in volumes.get(m["name"], {}):
                self.mounts[m["mountPath"]] = "emptyDir"
            else:
                raise AssertionError(f"volume {m['name']}: only PVCs and emptyDirs are expected")
        data_mounts = [p for p, kind in self.mounts.items() if kind == "pvc"]
        assert any(self.pgdata.startswith(p.rstrip("/") + "/") for p in data_mounts), (
            f"PGDATA {self.pgdata} must be a directory below the volume's root {data_mounts}"
        )  # fmt: skip


def sandbox_script(m: Manifest, work: Path, bindir: Path) -> str:
    """The shell run by `unshare`: the container's filesystem view, then the entrypoint."""
    root = work / "root"
    host = urlsplit(m.dsn).hostname
    # A mount point the host lacks is made on a tmpfs over its nearest existing parent
    # (hiding the host's files there, as the image would not have them), read-only again
    # before the volume is mounted on it.
    # Inside the root, as a kubelet resolves a mountPath in the container (on Debian, as
    # in the image, /var/run is a link to /run).
    mounts = [str(Path(p).resolve()) for p in m.mounts]
    made: list[str] = []
    for path in mounts:
        parent = Path(path)
        while not parent.exists():
            parent = parent.parent
        if str(parent) != path:
            assert parent != Path("/"), f"no parent of {path} to make its mount point in"
            if str(parent) not in made:
                made.append(str(parent))
    q = shlex.quote
    points = "\n".join(f"mount -t tmpfs -o mode=0755 kflow-image {q(str(root) + p)}" for p in made)
    points += "\n" + "\n".join(f"mkdir -p {q(str(root) + p)}" for p in mounts)
    points += "\n" + "\n".join(f"mount -o remount,ro {q(str(root) + p)}" for p in made)
    binds = "\n".join(f"mount --bind {shlex.quote(str(work / 'volumes' / str(i)))} "
                      f"{shlex.quote(str(root) + path)}"
                      for i, path in enumerate(mounts))  # fmt: skip
    steps = f"""
set -eu
export PATH={q(str(bindir))}:/usr/bin:/bin PGDATA={q(m.pgdata)} LC_ALL=C.UTF-8
mkdir -p "$PGDATA" && chmod 0700 "$PGDATA"
printf '%s\\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
initdb --username={q(m.user)} --pwfile=/tmp/pwfile --no-sync >/tmp/initdb.log
rm /tmp/pwfile
printf '\\nhost all all all scram-sha-256\\n' >> "$PGDATA/pg_hba.conf"
pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p {m.port}" -w start >/tmp/init-server.log
PGPASSWORD="$POSTGRES_PASSWORD" psql -v ON_ERROR_STOP=1 -q -h /var/run/postgresql \\
  -p {m.port} -U {q(m.user)} -d postgres -c 'CREATE DATABASE "{m.db}"'
pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
postgres -c listen_addresses='*' -p {m.port} >/tmp/server.log 2>&1 &
for i in $(seq 50); do {" ".join(q(a) for a in m.probe)} -p {m.port} -q && break; sleep 0.2; done
{" ".join(q(a) for a in m.probe)} -p {m.port}
psql {q(m.dsn)} -Atc "SELECT current_user, current_database(), inet_client_addr(), \\
  (SELECT auth_method FROM pg_hba_file_rules WHERE address = 'all')"
if PGPASSWORD=wrong psql "host={host} port={m.port} user={m.user} dbname={m.db}" \\
     -w -Atc 'SELECT 1' 2>/dev/null; then echo 'a wrong password was accepted'; exit 1; fi
if touch /etc/kflow-check 2>/dev/null; then echo 'the root filesystem is writable'; exit 1; fi
pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
echo "bundled PostgreSQL ran as uid {m.uid}, PGDATA {m.pgdata}, writable: {" ".join(m.mounts)}"
"""
    os.environ["KFLOW_CHECK_STEPS"] = steps  # the work dir is hidden under the emptyDir /tmp
    groups = ",".join(str(g) for g in {m.gid, m.fs_group} if g is not None)
    return f"""
set -eu
ip link set lo up
# Another Pod's address: the image's pg_hba.conf trusts 127.0.0.1 (initdb's default), so
# the Service's name resolves to 127.0.0.2, and connections to it come from there too.
ip route add local 127.0.0.2/32 dev lo src 127.0.0.2 table local
mount --rbind / {q(str(root))}
mount -o remount,bind,ro {q(str(root))}
{points}
{binds}
mount --bind {q(str(work / "passwd"))} {q(str(root))}/etc/passwd
mount --bind {q(str(work / "group"))} {q(str(root))}/etc/group
mount --bind {q(str(work / "hosts"))} {q(str(root))}/etc/hosts
exec chroot {q(str(root))} setpriv --reuid={m.uid} --regid={m.gid} --groups={groups} \\
  --inh-caps=-all --bounding-set=-all env -i POSTGRES_PASSWORD="$POSTGRES_PASSWORD" \\
  HOME=/tmp bash -c "$KFLOW_CHECK_STEPS"
"""


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        sys.exit("run as root: the check uses mount and network namespaces (unshare)")
    m = Manifest(render(argv))
    with tempfile.TemporaryDirectory(prefix="kflow-pg-check-") as tmp:
        work = Path(tmp)
        (work / "root").mkdir()
        for i, (path, kind) in enumerate(m.mounts.items()):
            target = work / "volumes" / str(i)
            target.mkdir(parents=True)
            if kind == "pvc" and m.fs_group is not None:  # what the kubelet does for fsGroup
                os.chown(target, 0, int(m.fs_group))
                target.chmod(0o2775)
            else:
                target.chmod(0o1777 if path == "/tmp" else 0o777)
        (work / "passwd").write_text(
            f"root:x:0:0:root:/root:/bin/bash\npostgres:x:{m.uid}:{m.gid}:PostgreSQL:"
            "/var/lib/postgresql:/bin/bash\n"
        )
        (work / "group").write_text(f"root:x:0:\npostgres:x:{m.gid}:\n")
        (work / "hosts").write_text(f"127.0.0.1 localhost\n127.0.0.2 {urlsplit(m.dsn).hostname}\n")
        script = sandbox_script(m, work, find_pg_bindir())
        result = subprocess.run(
            ["unshare", "--mount", "--net", "--propagation", "private", "bash", "-c", script],
            env={**os.environ, "POSTGRES_PASSWORD": m.password}, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            tmp_volume = work / "volumes" / str(list(m.mounts).index("/tmp"))
            for log in ("initdb.log", "init-server.log", "server.log"):
                if (tmp_volume / log).exists():
                    sys.stderr.write(f"--- {log}\n{(tmp_volume / log).read_text()}")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
