"""The public surface is exactly what we mean to support (like httpx's pinned exports)."""

import kflow


def test_exported_members_are_pinned() -> None:
    assert sorted(kflow.__all__) == sorted(
        [
            "AuthContext", "CircuitOpenError", "Clock", "CompensationDefinition",
            "DefinitionError", "Engine", "EnvError", "EnvProvider", "EventPayloadError",
            "EventTimeout", "InvalidInput", "KflowError", "LeaseHeld", "LeaseLost",
            "MappingEnv", "NonRetryable", "OsEnv", "PersistenceError", "Registry",
            "RetryPolicy", "RunNotFound", "RunStatus", "SegmentOutcome", "StepFailed",
            "StepState", "StepStatus", "StepTimeout", "Store", "SystemClock",
            "TransientError", "UndeclaredNameError", "VirtualClock", "WorkflowContext",
            "WorkflowDefinition", "WorkflowTimeout", "compensation", "workflow",
        ]
    )  # fmt: skip
    for name in kflow.__all__:
        assert getattr(kflow, name) is not None, name


def test_operator_is_a_source_root_not_a_package() -> None:
    from pathlib import Path

    source_root = Path(kflow.__file__).resolve().parents[1]
    assert source_root.name == "operator"
    assert not (source_root / "__init__.py").exists()
