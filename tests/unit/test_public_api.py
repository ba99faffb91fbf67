"""The public surface is exactly what we mean to support (pinned as httpx pins its exports)."""

import json
import subprocess
import sys

import kflow

EXPORTED = [
    "AuthContext", "CircuitOpenError", "Clock", "CompensationDefinition",
    "DefinitionConflict", "DefinitionError", "Engine", "EnvError", "EnvProvider",
    "EventPayloadError", "EventTimeout", "InvalidInput", "KflowError", "LeaseHeld",
    "LeaseLost", "MappingEnv", "NonRetryable", "OsEnv", "PersistenceError", "Registry",
    "RetryPolicy", "RunConflict", "RunNotFound", "RunStatus", "SegmentOutcome",
    "StepFailed", "StepState", "StepStatus", "StepTimeout", "Store", "SystemClock",
    "TransientError", "UndeclaredNameError", "VirtualClock", "WorkflowContext",
    "WorkflowDefinition", "WorkflowTimeout", "compensation", "workflow",
]  # fmt: skip


def test_exported_members_are_pinned() -> None:
    assert sorted(kflow.__all__) == sorted(EXPORTED)
    for name in kflow.__all__:
        assert getattr(kflow, name) is not None, name


def test_nothing_else_is_public_after_import() -> None:
    """Every public name of the package is in ``__all__``: the modules behind the facade
    are private (``kflow._engine``...), so none leaks as ``kflow._engine`` and the like.
    Checked in a fresh interpreter: other tests import more of kflow into this one."""
    probe = (
        "import json, kflow; "
        "print(json.dumps(sorted(n for n in vars(kflow) if not n.startswith('_'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(found) == sorted(kflow.__all__)


def test_operator_is_a_source_root_not_a_package() -> None:
    from pathlib import Path

    source_root = Path(kflow.__file__).resolve().parents[1]
    assert source_root.name == "operator"
    assert not (source_root / "__init__.py").exists()
