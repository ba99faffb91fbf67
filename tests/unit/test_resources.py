"""The CRDs are generated from the pydantic models; the checked-in YAML must match."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kflow.resources import WorkflowRunSpec, crd_manifests, render, structural

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", ["crds", "helm/kflow/files/crds"])
@pytest.mark.parametrize("crd", crd_manifests(), ids=lambda c: c["metadata"]["name"])
def test_checked_in_crds_match_the_models(crd: dict[str, object], folder: str) -> None:
    path = ROOT / folder / f"{crd['metadata']['name']}.yaml"  # type: ignore[index]
    assert path.read_text() == render(crd), f"{path} is stale: run `make crds`"


def test_run_spec_schema_is_structural() -> None:
    (_, run_crd) = crd_manifests()
    schema = run_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["required"] == ["workflow"]
    assert schema["properties"]["input"] == {
        "description": "The handler's input (any JSON).",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert schema["properties"]["version"] == {
        "description": "Workflow version; the active one when omitted.",
        "minimum": 1,
        "type": "integer",
        "nullable": True,
    }
    text = str(run_crd)
    assert "$ref" not in text and "anyOf" not in text and "title" not in text


def test_structural_refuses_real_unions() -> None:
    with pytest.raises(ValueError, match="no structural form"):
        structural({"anyOf": [{"type": "string"}, {"type": "integer"}]})


def test_spec_parsing_names_the_field() -> None:
    with pytest.raises(ValidationError, match="timeoutSeconds"):
        WorkflowRunSpec.model_validate({"workflow": "w", "timeoutSeconds": 0})
    spec = WorkflowRunSpec.model_validate({"workflow": "w", "version": 2, "input": {"a": [1]}})
    assert (spec.workflow, spec.version, spec.input) == ("w", 2, {"a": [1]})
