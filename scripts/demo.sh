#!/usr/bin/env bash
# The main job: start a throw-away PostgreSQL, run the example workflows through the
# engine to completion, print what each did, and clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
