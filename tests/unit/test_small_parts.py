"""Pure parts: retry policy, env access, circuit breaker, JSON conversion, migrations."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from kflow import CircuitOpenError, EnvError, MappingEnv, NonRetryable, RetryPolicy, VirtualClock
from kflow._env import EnvAccess
from kflow._http import CircuitBreakers, HttpClient
from kflow._serde import decode, describe_validation_error, encode
from kflow._store.migrations import MIGRATIONS


def test_retry_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(
        max_attempts=6,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=3,
        max_interval=timedelta(seconds=20),
    )
    assert [policy.backoff(n).total_seconds() for n in range(1, 5)] == [1, 3, 9, 20]


def test_retry_decisions() -> None:
    policy = RetryPolicy(max_attempts=3, non_retryable=(KeyError,))
    assert policy.should_retry(ValueError(), 1) and policy.should_retry(ValueError(), 2)
    assert not policy.should_retry(ValueError(), 3)
    assert not policy.should_retry(KeyError(), 1)
    assert not policy.should_retry(NonRetryable(), 1)


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"backoff_coefficient": 0.5}, {"initial_interval": timedelta(-1)}],
)
def test_retry_policy_validates(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_env_access() -> None:
    env = EnvAccess(MappingEnv({"N": "7", "FLAG": "yes", "BAD": "x", "WAIT": "PT5M"}))
    assert env.env("N") == "7" and env.env("NOPE") is None
    assert env.env_or("NOPE", "d") == "d" and env.env_contains("N")
    assert env.env_parse("N", int) == 7
    assert env.env_parse("FLAG", bool) is True
    assert env.env_parse("WAIT", timedelta) == timedelta(minutes=5)
    assert env.env_parse("N", Decimal) == Decimal(7)
    assert env.env_parse("N", lambda s: s * 2) == "77"
    assert env.env_parse_or("NOPE", 3) == 3
    assert env.env_parse_or("N", 3) == 7
    with pytest.raises(EnvError, match="BAD is not a valid int"):
        env.env_parse_or("BAD", 3)
    with pytest.raises(EnvError, match="NOPE is required"):
        env.env_require("NOPE")


async def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    status = {"code": 503}

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status["code"])

    breakers = CircuitBreakers(clock, failure_threshold=3, reset_after=timedelta(seconds=30))
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as raw:
        http = HttpClient(raw, breakers, timeout=5)
        for _ in range(3):
            assert (await http.get("http://svc/a")).status_code == 503
        assert breakers.state("http://svc/") == "open"
        with pytest.raises(CircuitOpenError, match="circuit open for http://svc/"):
            await http.get("http://svc/b")
        assert (await http.get("http://other/")).status_code == 503  # per host
        clock.advance(timedelta(seconds=30))
        assert breakers.state("http://svc/") == "half-open"
        assert (await http.get("http://svc/c")).status_code == 503  # the trial fails
        assert breakers.state("http://svc/") == "open"
        clock.advance(timedelta(seconds=30))
        status["code"] = 200
        assert (await http.post("http://svc/d")).status_code == 200
        assert breakers.state("http://svc/") == "closed"


async def test_a_cancelled_trial_request_does_not_keep_the_circuit_open() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    hang = {"on": False}

    async def respond(request: httpx.Request) -> httpx.Response:
        if hang["on"]:
            await asyncio.sleep(3600)
        return httpx.Response(503 if not hang.get("healthy") else 200)

    breakers = CircuitBreakers(clock, failure_threshold=1, reset_after=timedelta(seconds=30))
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as raw:
        http = HttpClient(raw, breakers, timeout=None)
        await http.get("http://svc/")
        clock.advance(timedelta(seconds=30))
        hang["on"] = True
        with pytest.raises(TimeoutError):  # the trial is cancelled (a step's timeout)
            await asyncio.wait_for(http.get("http://svc/"), timeout=0.05)
        hang.update(on=False, healthy=True)
        assert (await http.get("http://svc/")).status_code == 200  # the next one tries
        assert breakers.state("http://svc/") == "closed"


def test_only_the_trial_request_decides_a_half_open_circuit() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    breakers = CircuitBreakers(clock, failure_threshold=1, reset_after=timedelta(seconds=30))
    assert breakers.before("h") is False  # closed: an ordinary request
    breakers.record("h", ok=False)
    clock.advance(timedelta(seconds=30))
    assert breakers.before("h") is True  # the trial
    with pytest.raises(CircuitOpenError, match="a trial request is deciding"):
        breakers.before("h")  # a second trial is refused while the first runs


class M(BaseModel):
    when: datetime
    n: int


def test_json_round_trip_keeps_types() -> None:
    value = M(when=datetime(2026, 1, 2, tzinfo=UTC), n=3)
    encoded = encode(value)
    assert encoded == {"when": "2026-01-02T00:00:00Z", "n": 3}
    assert decode(encoded, M) == value
    assert decode(encoded, None) is encoded
    assert encode((1, 2)) == [1, 2]
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        encode(object())


def test_validation_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        decode({"when": "nope", "n": "x"}, M)
    text = describe_validation_error(info.value)
    assert "when: Input should be a valid datetime" in text
    assert "n: Input should be a valid integer" in text


def test_migrations_are_numbered_from_one() -> None:
    assert [n for n, _, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(sql.strip() for _, _, sql in MIGRATIONS)


def test_operator_settings_refuse_incomplete_setups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError as SettingsError

    from kflow.settings import OperatorSettings

    monkeypatch.setenv("KFLOW_DSN", "postgresql://kflow:hunter2@db/kflow")
    settings = OperatorSettings()
    assert "hunter2" not in repr(settings) and settings.database_dsn().endswith("@db/kflow")
    monkeypatch.setenv("KFLOW_STATUS_INTERVAL", "0.25")
    assert OperatorSettings().status_interval == timedelta(milliseconds=250)
    monkeypatch.setenv("KFLOW_RUN_TTL", "-5")
    with pytest.raises(SettingsError, match="run_ttl"):
        OperatorSettings()
    monkeypatch.setenv("KFLOW_RUN_TTL", "86400")
    assert OperatorSettings().run_ttl == timedelta(days=1)
    monkeypatch.delenv("KFLOW_RUN_TTL")
    monkeypatch.setenv("KFLOW_DEFAULT_EXECUTOR", "pod")
    with pytest.raises(SettingsError, match="needs KFLOW_RUNNER_DSN_SECRET"):
        OperatorSettings()
    monkeypatch.setenv("KFLOW_RUNNER_DSN_SECRET", "kflow-db")
    assert OperatorSettings().default_executor == "pod"
    monkeypatch.delenv("KFLOW_DEFAULT_EXECUTOR")
    monkeypatch.setenv("KFLOW_DSN_FILE", "/run/secrets/dsn")
    with pytest.raises(SettingsError, match="exactly one of KFLOW_DSN and KFLOW_DSN_FILE"):
        OperatorSettings()
