"""``@workflow`` and ``@compensation`` definitions, their registry, and signatures.

Decorating a handler does not register it anywhere: it returns a `WorkflowDefinition`.
A `Registry` is built explicitly from definitions or from the modules that hold them
(the operator imports the modules named in its settings), so there is no import-time
global state. A registry holds any number of versions per workflow name and one active
version per name: the highest, unless `Registry.activate` says otherwise.

A definition's **signature** is a hash of its name, version, declared step and event
names (as sets: their order does not matter), timeout, and input/output JSON schemas. It
is stored on each run when the run is bound to a version; a run whose stored signature
differs from the code's is blocked rather than replayed against code that no longer
matches it. Runs bound before the order stopped mattering carry the first scheme's hash
(the names in declaration order): `WorkflowDefinition.binds` accepts both, so they
resume under unchanged code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from kflow._errors import DefinitionError

__all__ = [
    "CompensationCall",
    "type_hints",
    "CompensationDefinition",
    "Registry",
    "WorkflowDefinition",
    "compensation",
    "workflow",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Workflow, step and compensation names: safe in keys and labels."""

EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
"""Event names: also the name part of an annotation key (``event.kflow.io/<name>``), which
Kubernetes limits to 63 characters, starting and ending with a letter or digit."""

Handler = Callable[..., Awaitable[Any]]


def check_name(kind: str, name: str) -> str:
    if kind == "event":
        pattern, limits = (
            EVENT_NAME_RE,
            (
                "starting and ending with a letter or digit, at most 63 characters "
                "(it is an annotation key's name)"
            ),
        )
    else:
        pattern, limits = NAME_RE, "starting with a letter or digit, at most 128 characters"
    if not isinstance(name, str) or not pattern.match(name):
        raise DefinitionError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-', {limits}"
        )
    return name


def type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # Annotations that cannot be resolved (e.g. classes local to a function under
        # ``from __future__ import annotations``) mean "untyped", not a broken definition.
        return {
            name: p.annotation
            for name, p in inspect.signature(fn).parameters.items()
            if not isinstance(p.annotation, str) and p.annotation is not p.empty
        }


def return_type(fn: Callable[..., Any]) -> Any:
    """The declared return type of ``fn``, or ``None`` when it has none we can use.

    Called for every step, so unannotated callables (lambdas, partials) take a fast path
    and resolved hints are cached."""
    annotations = getattr(fn, "__annotations__", None)
    if not annotations or "return" not in annotations:
        return None
    try:
        return _cached_return_type(fn)
    except TypeError:  # unhashable callable object
        return _resolve_return_type(fn)


def _resolve_return_type(fn: Callable[..., Any]) -> Any:
    hint = type_hints(fn).get("return")
    return None if hint in (None, type(None)) else hint


_cached_return_type = functools.lru_cache(maxsize=1024)(_resolve_return_type)


def _schema(tp: Any) -> dict[str, Any]:
    if tp is None:
        return {}
    try:
        schema: dict[str, Any] = TypeAdapter(tp).json_schema()
    except Exception as exc:
        raise DefinitionError(f"cannot build a JSON schema for {tp!r}: {exc}") from exc
    return schema


@dataclass(frozen=True)
class WorkflowDefinition:
    """A workflow handler with its declared contract. Calling it calls the handler."""

    name: str
    version: int
    handler: Handler
    steps: tuple[str, ...]
    events: tuple[str, ...]
    timeout: timedelta | None
    input_type: Any
    output_type: Any
    takes_input: bool
    compensate_on_failure: bool = True
    """Undo the completed steps when the handler fails (not part of the signature)."""
    signature: str = field(init=False)
    legacy_signature: str = field(init=False, repr=False)
    """The first scheme's signature (step and event names in declaration order)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", self._signature(ordered=False))
        object.__setattr__(self, "legacy_signature", self._signature(ordered=True))

    def binds(self, signature: str) -> bool:
        """Whether a run (or a stored definition) with ``signature`` has this contract."""
        return signature in (self.signature, self.legacy_signature)

    def _signature(self, *, ordered: bool) -> str:
        order = list if ordered else sorted
        contract = {
            "name": self.name,
            "version": self.version,
            "steps": order(self.steps),
            "events": order(self.events),
            "timeout": self.timeout.total_seconds() if self.timeout else None,
            "input": _schema(self.input_type),
            "output": _schema(self.output_type),
        }
        blob = json.dumps(contract, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def input_schema(self) -> dict[str, Any]:
        return _schema(self.input_type)

    @property
    def output_schema(self) -> dict[str, Any]:
        return _schema(self.output_type)

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.handler(*args, **kwargs)


def workflow(
    *,
    name: str,
    version: int = 1,
    steps: Iterable[str] = (),
    events: Iterable[str] = (),
    timeout: timedelta | None = None,
    compensate_on_failure: bool = True,
) -> Callable[[Handler], WorkflowDefinition]:
    """Declare a workflow handler: ``async def handler(ctx, input) -> output``.

    ``steps`` and ``events`` list every step and event name the handler may use; using
    another is an error at run time. ``timeout`` bounds the whole run (a persisted
    deadline). The input type is the handler's second parameter's annotation, the output
    type its return annotation; both are part of the signature. When the handler fails
    (an error it does not handle, a step that failed for good, the workflow timeout), the
    compensations of its completed steps run, most recent first, unless
    ``compensate_on_failure=False`` (then the run ends Failed with its steps done).
    """
    check_name("workflow", name)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DefinitionError(f"workflow {name!r}: version must be a positive integer")
    step_names = tuple(check_name("step", s) for s in steps)
    event_names = tuple(check_name("event", e) for e in events)
    for kind, names in (("step", step_names), ("event", event_names)):
        if len(set(names)) != len(names):
            raise DefinitionError(f"workflow {name!r}: duplicate {kind} names in {names}")
    if timeout is not None and timeout <= timedelta(0):
        raise DefinitionError(f"workflow {name!r}: timeout must be positive")

    def decorate(fn: Handler) -> WorkflowDefinition:
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(f"workflow {name!r}: the handler must be an async def")
        params = list(inspect.signature(fn).parameters.values())
        if not 1 <= len(params) <= 2:
            raise DefinitionError(
                f"workflow {name!r}: the handler takes (ctx) or (ctx, input), "
                f"not {len(params)} parameters"
            )
        hints = type_hints(fn)
        takes_input = len(params) == 2
        return WorkflowDefinition(
            name=name,
            version=version,
            handler=fn,
            steps=step_names,
            events=event_names,
            timeout=timeout,
            input_type=hints.get(params[1].name) if takes_input else None,
            output_type=return_type(fn),
            takes_input=takes_input,
            compensate_on_failure=compensate_on_failure,
        )

    return decorate


@dataclass(frozen=True)
class CompensationCall:
    """A durable compensation with explicit JSON arguments: ``release.bind(reservation_id)``."""

    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class CompensationDefinition:
    """A named compensation, ``async def fn(ctx, *args)``; durable across restarts.

    Passed as ``compensate=fn`` it is called with the step's result; ``fn.bind(...)``
    fixes other JSON-serialisable arguments instead.
    """

    name: str
    fn: Callable[..., Awaitable[None]]

    def bind(self, *args: Any) -> CompensationCall:
        return CompensationCall(self.name, args)

    def __call__(self, *args: Any) -> Awaitable[None]:
        return self.fn(*args)


def compensation(name: str) -> Callable[[Callable[..., Awaitable[None]]], CompensationDefinition]:
    """Declare a durable compensation under a stable ``name``."""
    check_name("compensation", name)

    def decorate(fn: Callable[..., Awaitable[None]]) -> CompensationDefinition:
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(f"compensation {name!r} must be an async def")
        return CompensationDefinition(name, fn)

    return decorate


class Registry:
    """The workflows and compensations an engine can run, by name and version."""

    def __init__(self, *items: WorkflowDefinition | CompensationDefinition) -> None:
        self._workflows: dict[str, dict[int, WorkflowDefinition]] = {}
        self._active: dict[str, int] = {}
        self._compensations: dict[str, CompensationDefinition] = {}
        for item in items:
            self.add(item)

    @classmethod
    def from_modules(cls, modules: Iterable[str | types.ModuleType]) -> Registry:
        """Collect every definition found at the top level of the given modules."""
        registry = cls()
        for module in modules:
            mod = importlib.import_module(module) if isinstance(module, str) else module
            for value in list(vars(mod).values()):
                if isinstance(value, WorkflowDefinition | CompensationDefinition):
                    registry.add(value)
        return registry

    def add(self, item: WorkflowDefinition | CompensationDefinition) -> None:
        if isinstance(item, CompensationDefinition):
            known = self._compensations.setdefault(item.name, item)
            if known.fn is not item.fn:
                raise DefinitionError(f"two compensations are named {item.name!r}")
            return
        versions = self._workflows.setdefault(item.name, {})
        known_wf = versions.setdefault(item.version, item)
        if known_wf.handler is not item.handler:
            raise DefinitionError(f"two handlers for workflow {item.name!r} v{item.version}")
        self._active[item.name] = max(self._active.get(item.name, 0), item.version)

    def activate(self, name: str, version: int) -> None:
        if version not in self._workflows.get(name, {}):
            raise DefinitionError(f"cannot activate unknown workflow {name!r} v{version}")
        self._active[name] = version

    def has_workflow(self, name: str) -> bool:
        return name in self._workflows

    def get(self, name: str, version: int) -> WorkflowDefinition | None:
        return self._workflows.get(name, {}).get(version)

    def active(self, name: str) -> WorkflowDefinition | None:
        version = self._active.get(name)
        return None if version is None else self._workflows[name][version]

    def compensation(self, name: str) -> CompensationDefinition | None:
        return self._compensations.get(name)

    def workflows(self) -> list[WorkflowDefinition]:
        return [d for versions in self._workflows.values() for d in versions.values()]
