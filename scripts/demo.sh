#!/usr/bin/env bash
# The main job: a local Kubernetes control plane + PostgreSQL + the kflow operator, then
# the example WorkflowRuns driven with kubectl to Completed (see scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/bootstrap-cluster.sh
exec .venv/bin/python scripts/demo.py "$@"
