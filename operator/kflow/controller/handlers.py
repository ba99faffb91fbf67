"""The kopf handlers: parse the body (`kflow.controller.bodies`), call the `Controller`,
nothing else. No raw body goes further.

Registered on a `kopf.OperatorRegistry` of their own (no import-time global state). The
controller reaches them through kopf's ``memo``.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from kflow._errors import InvalidInput, TransientError
from kflow._retry import backoff
from kflow._serde import describe_validation_error
from kflow.controller.bodies import (
    kflow_annotations,
    run_ref,
    run_spec,
    run_status,
    spec_edits,
    workflow_object,
)
from kflow.controller.controller import Controller
from kflow.controller.pod_manifest import RUN_LABEL, read_pod
from kflow.resources import GROUP, VERSION, WorkflowRunSpec

__all__ = ["FINALIZER", "build_registry"]

FINALIZER = "kflow.io/finalizer"


def build_registry(*, admission: bool, watching: bool = True) -> kopf.OperatorRegistry:
    """The handlers; ``admission`` adds the validating webhook's (kopf refuses to start
    with admission handlers and no webhook server). ``watching=False`` leaves out the
    watch handlers: a standby's kopf, which serves the webhook, watches nothing."""
    registry = kopf.OperatorRegistry()
    watched = registry if watching else kopf.OperatorRegistry()  # that one never runs
    runs: dict[str, Any] = {
        "group": GROUP, "version": VERSION, "plural": "workflowruns", "registry": watched,
    }  # fmt: skip

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own gets none of kopf's default login handlers.
        return kopf.login_via_client(**kwargs)

    # Runs are adopted from the watch stream (kopf's initial listing, then the event of
    # kopf's finalizer PATCH), not by create/resume handlers: those make kopf write its
    # diff-base annotation on every object, one PATCH (and one watch event) per run more.
    # The controller keeps what kopf would keep: which runs it adopted, refused, or must
    # try again.
    @kopf.on.event(**runs)
    async def seen(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        if event["type"] == "DELETED":
            return
        controller: Controller = memo["controller"]
        body = event["object"]
        meta = body["metadata"]
        ref = run_ref(body)
        if not controller.knows(ref) and not meta.get("deletionTimestamp"):
            if FINALIZER not in (meta.get("finalizers") or []):
                return  # not before the finalizer: deleting it must cancel the run first
            # Listed at start (type None): a previous operator may have died mid-run.
            await controller.adopt(
                ref, run_spec(body), status=run_status(body), resumed=event["type"] is None
            )
        elif controller.adopted(ref):
            # Edited since? (generation: the spec is parsed only then)
            await controller.adoption.spec_seen(ref, lambda: run_spec(body))
        ours = kflow_annotations(body)
        if ours and controller.refused(ref):
            await controller.adoption.retry_annotation(ref, run_spec(body), ours)
        if ours and controller.adopted(ref):
            await controller.annotations(ref, ours)

    @kopf.on.delete(**runs)
    async def deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
        controller: Controller = memo["controller"]
        # Asked again sooner at first (a compensation Pod is quick), then less often: a
        # run nothing can undo yet (no template, the database away) is not polled hot.
        delay = backoff(retry + 1, factor=1.5, cap=30.0)  # kopf counts retries from 0
        try:
            done = await controller.delete(run_ref(body))
        except TransientError as exc:
            raise kopf.TemporaryError(
                f"cannot cancel the run before deletion, retrying: {exc}", delay=delay
            ) from exc
        if not done:
            raise kopf.TemporaryError("a segment Pod undoes the run before it goes", delay=delay)

    # Workflow resources: watched, never changed (no finalizer, no kopf annotations).
    @kopf.on.event(GROUP, VERSION, "workflowdefinitions", registry=watched)
    async def workflow(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        controller: Controller = memo["controller"]
        if event["type"] == "DELETED":
            controller.workflows.deleted(event["object"]["metadata"]["uid"])
        else:
            await controller.workflows.seen(workflow_object(event["object"]))

    @kopf.on.event("v1", "pods", labels={RUN_LABEL: kopf.PRESENT}, registry=watched)
    async def pod(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        controller: Controller = memo["controller"]
        controller.pods.pod_event(read_pod(event["object"], deleted=event["type"] == "DELETED"))

    def validate(spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
        controller: Controller = memo["controller"]
        try:
            parsed = WorkflowRunSpec.model_validate(dict(spec))
            controller.engine.check_input(parsed.workflow, parsed.input, version=parsed.version)
        except ValidationError as exc:
            raise kopf.AdmissionError(f"invalid spec: {describe_validation_error(exc)}") from exc
        except InvalidInput as exc:
            raise kopf.AdmissionError(f"spec.input: {exc}") from exc

    async def fixed(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, **kwargs: Any) -> None:
        """Refuse an edit of a run's workflow, version or input once the run exists (a
        refused WorkflowRun, which has no run, may be fixed: its new spec is validated)."""
        controller: Controller = memo["controller"]
        old: kopf.Body | None = kwargs.get("old")
        before, after = run_spec(old or {}), run_spec(body)
        if not isinstance(before, WorkflowRunSpec) or not isinstance(after, WorkflowRunSpec):
            return  # the API server's schema checks what does not parse
        edits = spec_edits(before, after)
        if not edits:
            return
        try:
            exists = await controller.has_run(run_ref(body))
        except TransientError:  # the operator reports the edit if the run exists
            return
        if not exists:
            validate(spec, memo)
            return
        raise kopf.AdmissionError(
            f"{', '.join(edits)} cannot change once the run exists: the run keeps the spec "
            "it started with; create a new WorkflowRun to run another"
        )

    if admission:
        admitting = {**runs, "registry": registry}
        kopf.on.validate(**admitting, id="input", operation="CREATE", ignore_failures=True)(
            validate
        )
        kopf.on.validate(**admitting, id="fixed", operation="UPDATE", ignore_failures=True)(fixed)
    # No @kopf.on.probe: liveness never asks the database (kflow.controller.health).
    return registry
