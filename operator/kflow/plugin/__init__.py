"""``kubectl kflow``: the kubectl plugin for kflow's WorkflowRuns and Workflows.

kubectl runs ``kubectl-kflow`` (this package's `main`) for ``kubectl kflow ...``. It
lists runs (``runs``), shows one in full (``describe``), drives runs through the
annotations the operator acts on (``event``, ``cancel``, ``retire``, ``retry``), and
prints the `WorkflowDefinition` resources a Python module declares (``manifest``). It talks to the
API server only, never to PostgreSQL: what it shows is the status the operator mirrors.
See docs/kubectl-kflow.md.
"""

from __future__ import annotations

from kflow.plugin.commands import main

__all__ = ["main"]
