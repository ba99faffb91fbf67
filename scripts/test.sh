#!/usr/bin/env bash
# The whole test suite: lint, types, layers, then unit, integration and e2e tests.
# Every server a test needs (PostgreSQL, a Kubernetes control plane) is started by the
# test harness itself; bootstrap-cluster.sh builds the control plane once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/bootstrap-cluster.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" && ruff check . && ruff format --check .
echo "== mypy" && mypy
echo "== import-linter" && lint-imports --no-cache  # its cache has reported deleted imports
echo "== pytest" && exec pytest -q "$@"
