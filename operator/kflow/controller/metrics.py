"""Prometheus metrics of the operator, served on their own port (``/metrics``).

- ``kflow_runs{phase}``: runs this operator knows, by phase (blocked phases included);
- ``kflow_runs_blocked``: runs whose code is missing or changed;
- ``kflow_step_duration_seconds{workflow,outcome}``: steps, from start to outcome;
- ``kflow_segments_total{status}``: segments run, by the status they left;
- ``kflow_event_to_resume_seconds``: from an event's delivery to the end of the segment
  it woke;
- ``kflow_timer_lateness_seconds``: how late sleep timers fired;
- ``kflow_pod_problems_total{reason}``: segment Pods that failed (``SegmentFailed``), do
  not start (``PodNotStarting``) or cannot be made (``NoPodTemplate``);
- ``kflow_definition_conflicts{workflow,version}``: 1 for each workflow version that
  PostgreSQL records with another signature than this operator's code (its runs block);
- ``kflow_leader``: 1 while this replica is the active operator, 0 on standby
  (``KFLOW_LEADER_ELECTION``).

Step durations are observed for inline runs; a segment Pod's steps are recorded by its
runner (their timings are in each run's status and in PostgreSQL).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kflow._models import RunStatus, StepKind, StepState, StepStatus

__all__ = ["Metrics"]

_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Gauge("kflow_runs", "Runs by phase", ["phase"], registry=r)
        self.blocked = Gauge("kflow_runs_blocked", "Runs blocked on missing or changed code",
                             registry=r)  # fmt: skip
        self.steps = Histogram(
            "kflow_step_duration_seconds", "Step duration, start to outcome",
            ["workflow", "outcome"], buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.segments = Counter("kflow_segments", "Segments run, by resulting status",
                                ["status"], registry=r)  # fmt: skip
        self.event_to_resume = Histogram(
            "kflow_event_to_resume_seconds", "Event delivered -> the segment it woke ended",
            buckets=_FAST, registry=r,
        )  # fmt: skip
        self.timer_lateness = Histogram(
            "kflow_timer_lateness_seconds", "How late sleep timers fired",
            buckets=_FAST, registry=r,
        )  # fmt: skip
        self.pod_problems = Counter(
            "kflow_pod_problems", "Segment Pods that failed, did not start or were not made",
            ["reason"], registry=r,
        )  # fmt: skip
        self.definition_conflicts = Gauge(
            "kflow_definition_conflicts",
            "Workflow versions recorded with another signature than this code's (runs block)",
            ["workflow", "version"], registry=r,
        )  # fmt: skip
        self.leader = Gauge("kflow_leader", "1 while this replica is the active operator",
                            registry=r)  # fmt: skip
        for status in RunStatus:
            self.runs.labels(status.value)

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def phase_changed(self, before: RunStatus | None, after: RunStatus) -> None:
        if before is not None:
            self.runs.labels(before.value).dec()
            if before.is_blocked:
                self.blocked.dec()
        self.runs.labels(after.value).inc()
        if after.is_blocked:
            self.blocked.inc()

    def forgotten(self, status: RunStatus) -> None:
        self.runs.labels(status.value).dec()
        if status.is_blocked:
            self.blocked.dec()

    def step_recorded(self, workflow: str, step: StepState) -> None:
        finished = step.status in (StepStatus.COMPLETED, StepStatus.FAILED)
        if step.kind != StepKind.STEP or not finished or step.started_at is None:
            return
        if step.completed_at is not None:
            seconds = (step.completed_at - step.started_at).total_seconds()
            self.steps.labels(workflow, step.status.value).observe(max(seconds, 0.0))
