"""The kopf baseline of ``bench/operator_throughput.py``: the least an operator can do.

One ``on.create`` handler on the same CRD (WorkflowRuns) that only marks each object done
(``status.phase: Done``), with kopf's default settings otherwise (progress and diff-base in
annotations). What kflow does beyond this — PostgreSQL, steps, its own status — is what
the comparison measures. Run as ``kopf run --standalone -n NS bench/kopf_minimal.py``.
"""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # like kflow: no Kubernetes Event per handler call


@kopf.on.create("kflow.io", "v1alpha1", "workflowruns")
def mark_done(patch: kopf.Patch, **_: Any) -> None:
    patch.status["phase"] = "Done"
