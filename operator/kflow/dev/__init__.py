"""Development tooling: servers on loopback for tests, demos and local use.

- `kflow.dev.postgres`: `LocalPostgres`, a throw-away PostgreSQL from Debian's binaries;
- `kflow.dev.cluster`: a real Kubernetes control plane and a node stand-in, no containers.

Production code (the engine, the store, the controller, the runner, the CLI and plugin)
never imports this package (an import-linter contract); `kflow.testing` and the tests do.
"""
