"""Settings of the operator and the runner, from ``KFLOW_*`` environment variables.

`StoreSettings` is what anything running workflows needs (the store, the code);
`OperatorSettings` adds the operator's knobs; ``kflow runner`` uses `StoreSettings`.
Loaded once at start-up and passed explicitly; nothing reads the environment later. The
database DSN comes from ``KFLOW_DSN`` or, better in a cluster, from a file mounted from a
Secret (``KFLOW_DSN_FILE``); it is a `SecretStr`, so it never appears in logs or reprs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["OperatorSettings", "StoreSettings"]


def _seconds(value: object) -> object:
    """Durations may be plain seconds (``0.5``) as well as ISO 8601 (``PT0.5S``)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds)]


class StoreSettings(BaseSettings):
    """Where runs live and which code runs them (environment variables ``KFLOW_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="KFLOW_", extra="forbid")

    dsn: SecretStr | None = None
    """PostgreSQL DSN of kflow's store. Prefer `dsn_file`."""

    dsn_file: Path | None = None
    """A file holding the DSN (mounted from a Secret)."""

    schema_name: str = Field(default="kflow", alias="KFLOW_SCHEMA")
    """The PostgreSQL schema holding kflow's tables."""

    db_timeout: Duration = timedelta(seconds=30)
    """Bound on every connection attempt and statement: a stalled database is an error
    the operator reports and retries, never a hang."""

    workflow_modules: list[str] = Field(default_factory=list)
    """Python modules whose `@workflow`/`@compensation` definitions this process runs."""

    lease_ttl: Duration = timedelta(seconds=60)
    """How long a crashed executor keeps a run locked."""

    @model_validator(mode="after")
    def _one_dsn(self) -> StoreSettings:
        if (self.dsn is None) == (self.dsn_file is None):
            raise ValueError("set exactly one of KFLOW_DSN and KFLOW_DSN_FILE")
        return self

    def database_dsn(self) -> str:
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        assert self.dsn_file is not None
        return self.dsn_file.read_text(encoding="utf-8").strip()


class OperatorSettings(StoreSettings):
    """The operator's configuration (environment variables ``KFLOW_<FIELD>``)."""

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch (JSON list); empty means all (needs cluster-wide RBAC)."""

    concurrency: int = Field(default=16, ge=1)
    """Segments the inline executor runs at once."""

    default_executor: Literal["inline", "pod"] = "inline"
    """Executor for WorkflowDefinitions that do not choose one (``spec.executor``): ``inline`` runs
    segments in the operator, ``pod`` in a Pod per segment (needs `runner_dsn_secret`)."""

    runner_dsn_secret: str | None = None
    """Secret (in each run's namespace) holding the DSN segment Pods connect with; the
    pod executor is off without it."""

    runner_dsn_key: str = "dsn"
    """Key of the DSN in `runner_dsn_secret`."""

    runner_image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets (names, JSON list) every segment Pod pulls its image with, in the run's
    namespace; a WorkflowDefinition's ``template.imagePullSecrets`` adds to them."""

    runner_service_account: str | None = None
    """ServiceAccount of segment Pods whose template names none (the Helm chart's, which
    has no rights); the namespace's default otherwise."""

    segment_retries: int = Field(default=3, ge=0)
    """Times a segment whose Pod failed (crash, OOM kill, eviction, never started) is tried
    again, with backoff, before the run is marked Failed."""

    pod_start_timeout: Duration = timedelta(minutes=5)
    """A segment Pod not started by then (image pull error, unschedulable) is a failure."""

    pod_grace_seconds: int = Field(default=30, ge=0)
    """Grace period of a segment Pod stopped by a cancel."""

    pod_ttl: Duration = timedelta(hours=1)
    """Finished segment Pods (and their logs) are kept this long."""

    run_ttl: Duration | None = None
    """Finished WorkflowRuns are deleted this long after their run finished, unless their
    ``spec.ttlSecondsAfterFinished`` says otherwise; kept when None (the default). The
    run's history stays in PostgreSQL."""

    @field_validator("run_ttl")
    @classmethod
    def _run_ttl_in_range(cls, ttl: timedelta | None) -> timedelta | None:
        if ttl is not None and not timedelta(0) <= ttl <= timedelta(seconds=2**31 - 1):
            raise ValueError("must be between 0 and 2147483647 seconds")
        return ttl

    @model_validator(mode="after")
    def _pod_executor_configured(self) -> OperatorSettings:
        if self.default_executor == "pod" and not self.runner_dsn_secret:
            raise ValueError(
                "KFLOW_DEFAULT_EXECUTOR=pod needs KFLOW_RUNNER_DSN_SECRET: the Secret "
                "holding the DSN that segment Pods connect with"
            )
        return self

    status_interval: Duration = timedelta(milliseconds=500)
    """At most one status PATCH per run per interval while its steps are fast."""

    max_event_bytes: int = Field(default=64 * 1024, ge=1)
    """Largest event payload accepted from an annotation."""

    max_status_steps: int = Field(default=50, ge=1)
    """Steps listed in a run's status; older ones are counted in ``stepsOmitted``."""

    max_status_output_bytes: int = Field(default=16 * 1024, ge=0)
    """Largest output copied into the status; larger ones are truncated there."""

    health_port: int = 8080
    """Port of the health endpoints: ``/healthz`` (liveness: the process and its kopf
    operator run; never the database) and ``/readyz`` (readiness: the database answers)."""

    leader_election: bool = False
    """Run as one of several replicas: only the holder of the Lease `leader_lease` acts;
    the others wait as hot standbys (serving the webhook, writing nothing)."""

    leader_lease: str = "kflow-operator"
    """Name of the ``coordination.k8s.io/v1`` Lease the replicas elect a leader with."""

    leader_namespace: str | None = None
    """Namespace of that Lease (the operator's own); required with `leader_election`."""

    pod_name: str | None = None
    """This replica's name in the Lease's ``holderIdentity`` (the downward API's
    ``metadata.name``); hostname and pid otherwise. A random suffix is always added, so a
    restarted container never takes its predecessor's lease for its own."""

    leader_lease_duration: Duration = timedelta(seconds=8)
    """A standby takes the Lease over once it has seen it unrenewed this long."""

    leader_renew_deadline: Duration = timedelta(seconds=5)
    """A leader that has not renewed the Lease for this long exits at once (before a
    standby can take over, `leader_lease_duration` after the last renewal it saw)."""

    leader_retry_period: Duration = timedelta(seconds=1)
    """How often the leader renews the Lease and a standby looks at it."""

    @model_validator(mode="after")
    def _leader_election_configured(self) -> OperatorSettings:
        if not self.leader_election:
            return self
        if not self.leader_namespace:
            raise ValueError(
                "KFLOW_LEADER_ELECTION needs KFLOW_LEADER_NAMESPACE: the namespace of the "
                "Lease the replicas elect their leader with (the operator's own)"
            )
        if not (self.leader_retry_period < self.leader_renew_deadline < self.leader_lease_duration):
            raise ValueError(
                "KFLOW_LEADER_RETRY_PERIOD < KFLOW_LEADER_RENEW_DEADLINE < "
                "KFLOW_LEADER_LEASE_DURATION must hold: a leader stops before a standby "
                "may take over"
            )
        return self

    webhook_port: int = 0
    """Port of the validating admission webhook (0: no webhook). It refuses WorkflowRuns
    whose input does not fit the workflow's input model, naming the field."""

    webhook_host: str = "127.0.0.1"
    """The address the API server dials for the webhook (a Service name in a cluster)."""

    webhook_cert_dir: Path | None = None
    """``tls.crt``, ``tls.key`` and ``ca.crt`` (a mounted Secret); without it, a self-signed
    certificate is made at start (for the local control plane)."""

    webhook_name: str = "validate.kflow.io"
    """Name of the ValidatingWebhookConfiguration the operator keeps up to date (cluster
    rights); empty: the operator leaves it alone (the Helm chart installs its own)."""

    metrics_port: int = 9090
    """Port of the Prometheus endpoint (``/metrics``); 0 turns it off."""
