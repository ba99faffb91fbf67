# Developer shortcuts; CI runs scripts/test.sh (the README's test command) directly.
.PHONY: test demo lint bench crds
test:
	./scripts/test.sh
demo:
	./scripts/demo.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports --no-cache
bench:
	.venv/bin/python bench/step_overhead.py
crds:
	.venv/bin/python -m kflow.resources crds helm/kflow/files/crds
