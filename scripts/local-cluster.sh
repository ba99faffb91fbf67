#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, no containers needed:
#   scripts/local-cluster.sh up [--postgres] [--foreground]   start (builds once, ~7 min)
#   scripts/local-cluster.sh status | down | build
# etcd, kube-apiserver (RBAC, token auth), controller-manager, scheduler and a node
# stand-in that runs Pods as local processes, all on 127.0.0.1 and free ports.
# `up` prints the KUBECONFIG to export. See operator/kflow/dev/cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/bootstrap-cluster.sh
exec .venv/bin/python -m kflow.dev.cluster "${@:-up}"
