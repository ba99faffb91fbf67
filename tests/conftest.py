"""Fixtures shared by every test tier: a real, throw-away PostgreSQL per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kflow.dev.postgres import LocalPostgres


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """The DSN of a PostgreSQL server started for this test session on a free port."""
    with LocalPostgres() as pg:
        yield pg.dsn
