"""Definitions, signatures and the registry (pure logic)."""

from __future__ import annotations

import types
from datetime import timedelta

import pytest
from pydantic import BaseModel

from kflow import DefinitionError, Registry, WorkflowContext, compensation, workflow


class In(BaseModel):
    a: int


class In2(BaseModel):
    a: str


def define(**overrides: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {
        "name": "wf", "version": 1, "steps": ["s1", "s2"], "events": ["e"], "timeout": None,
    }  # fmt: skip
    options.update(overrides)
    input_type = options.pop("input_type", In)

    async def handler(ctx: WorkflowContext, data: In) -> int:
        return 1

    handler.__annotations__["data"] = input_type
    return workflow(**options)(handler)  # type: ignore[arg-type]


def test_signature_is_stable_for_the_same_contract() -> None:
    assert define().signature == define().signature
    # Golden value. If this changes (kflow's hashing, or a pydantic upgrade that renders
    # JSON schemas differently), every in-flight run would block on a signature mismatch.
    assert define().signature == (
        "bbc846e570acd8032b73e63ae3ae0814fe152e2ceac93c8be482f2e1c86e018d"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"steps": ["s1", "s3"]},
        {"events": []},
        {"timeout": timedelta(hours=1)},
        {"input_type": In2},
        {"name": "other"},
    ],
)
def test_signature_changes_with_the_contract(change: dict[str, object]) -> None:
    assert define(**change).signature != define().signature


def test_the_order_of_declared_names_does_not_change_the_signature() -> None:
    assert define(steps=["s2", "s1"], events=["e", "f"]).signature == (
        define(steps=["s1", "s2"], events=["f", "e"]).signature
    )
    # A run bound under the first scheme (names in declaration order) still binds.
    reordered = define(steps=["s2", "s1"])
    assert reordered.legacy_signature != reordered.signature
    assert reordered.binds(reordered.legacy_signature) and reordered.binds(define().signature)
    assert not reordered.binds(define(version=2).signature)


def test_definition_keeps_types_and_stays_callable() -> None:
    d = define()
    assert d.input_type is In and d.output_type is int and d.takes_input
    assert d.input_schema["properties"] == {"a": {"title": "A", "type": "integer"}}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "bad name"}, "invalid workflow name"),
        ({"version": 0}, "version must be a positive integer"),
        ({"steps": ["a", "a"]}, "duplicate step names"),
        ({"events": ["x#1"]}, "invalid event name"),
        ({"events": ["e" * 64]}, "at most 63 characters"),  # an annotation key's name
        ({"events": ["approved-"]}, "ending with a letter or digit"),
        ({"timeout": timedelta(0)}, "timeout must be positive"),
    ],
)
def test_bad_declarations_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        define(**options)


def test_handler_shape_is_checked() -> None:
    def sync(ctx: WorkflowContext) -> None: ...

    async def three(ctx: WorkflowContext, a: int, b: int) -> None: ...

    with pytest.raises(DefinitionError, match="must be an async def"):
        workflow(name="w")(sync)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="takes \\(ctx\\) or \\(ctx, input\\)"):
        workflow(name="w")(three)
    with pytest.raises(DefinitionError, match="must be an async def"):
        compensation("c")(sync)  # type: ignore[arg-type]


def test_registry_versions_and_activation() -> None:
    v1, v2 = define(version=1), define(version=2)
    registry = Registry(v1, v2)
    assert registry.active("wf") is v2
    registry.activate("wf", 1)
    assert registry.active("wf") is v1
    assert registry.get("wf", 2) is v2 and registry.get("wf", 3) is None
    assert registry.active("nope") is None and not registry.has_workflow("nope")
    with pytest.raises(DefinitionError, match="unknown workflow"):
        registry.activate("wf", 3)
    with pytest.raises(DefinitionError, match="two handlers"):
        registry.add(define(version=1))


def test_registry_from_modules_collects_definitions() -> None:
    module = types.ModuleType("user_workflows")

    @compensation("undo")
    async def undo(ctx: WorkflowContext) -> None: ...

    module.wf = define()  # type: ignore[attr-defined]
    module.undo = undo  # type: ignore[attr-defined]
    module.other = 42  # type: ignore[attr-defined]
    registry = Registry.from_modules([module])
    assert registry.active("wf") is module.wf  # type: ignore[attr-defined]
    assert registry.compensation("undo") is undo

    @compensation("undo")
    async def undo2(ctx: WorkflowContext) -> None: ...

    with pytest.raises(DefinitionError, match="two compensations"):
        registry.add(undo2)
