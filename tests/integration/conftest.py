"""Integration fixtures: engines on a real PostgreSQL, one private schema per test."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from kflow.testing import WorkflowTestEnv

EnvFactory = Callable[..., AbstractAsyncContextManager[WorkflowTestEnv]]


@pytest.fixture
def make_env(pg_dsn: str) -> EnvFactory:
    """``async with make_env(wf, comp, **engine_options) as env`` on the session's server."""

    def factory(*definitions: Any, **options: Any) -> AbstractAsyncContextManager[WorkflowTestEnv]:
        return WorkflowTestEnv.start(*definitions, dsn=pg_dsn, **options)

    return factory


@pytest.fixture
def counter() -> dict[str, int]:
    """Counts calls of step functions by name (in this process)."""
    return {}
