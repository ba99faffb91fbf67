"""Every example in examples/ runs end to end here, and its run.yaml is a valid run of it.

The examples run on a real PostgreSQL in virtual time (`make_env`): a wait of days passes
at once. The shipping quotes call a real HTTP server, the example's own flaky service, in
a thread on a free port.
"""

from __future__ import annotations

import importlib
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from examples.expense_approval.workflow import ExpenseClaim, approve_expense
from examples.orders.workflow import Order, fulfil, release_stock
from examples.shipping_quotes.service import Fault, QuoteService, quote
from examples.shipping_quotes.workflow import Parcel, QuoteComparison, QuoteRequest, compare_quotes
from examples.trial_reminders.workflow import Trial, TrialReport, remind
from pydantic import TypeAdapter

from kflow import Engine, Registry, RunStatus, StepState, StepStatus
from kflow.resources import GROUP, VERSION, WorkflowRunSpec
from kflow.testing import WorkflowTestEnv
from tests.integration.conftest import EnvFactory

pytestmark = pytest.mark.integration

ORDER = Order(id="o-1", sku="book", quantity=2, amount_cents=2400)
RESERVED = "reservations/rsv-o-1"


async def test_order_is_held_paid_and_shipped(make_env: EnvFactory) -> None:
    async with make_env(fulfil, release_stock) as env:
        waiting = await env.execute(fulfil, ORDER)
        assert waiting.status is RunStatus.WAITING
        assert waiting.waiting_event == "payment-confirmed"
        await env.send_event(
            waiting.run_id, "payment-confirmed", {"ref": "ch_1", "amount_cents": 2400}
        )
        done = await env.drive(waiting.run_id)
        assert done.status is RunStatus.COMPLETED
        assert done.output == {
            "order_id": "o-1",
            "reservation_id": "rsv-o-1",
            "payment_ref": "ch_1",
        }
        assert await env.store.kv_keys("order-fulfilment") == [
            "reservations/rsv-o-1",
            "shipments/o-1",
        ]


async def test_cancelled_order_releases_its_stock(make_env: EnvFactory) -> None:
    async with make_env(fulfil, release_stock) as env:
        waiting = await env.execute(fulfil, ORDER)
        assert await env.store.kv_keys("order-fulfilment") == [RESERVED]
        outcome = await env.engine.cancel(waiting.run_id, "changed my mind")
        assert outcome.status is RunStatus.COMPENSATED
        assert await env.store.kv_keys("order-fulfilment") == []


async def test_wrong_payment_compensates_and_fails(make_env: EnvFactory) -> None:
    async with make_env(fulfil, release_stock) as env:
        waiting = await env.execute(fulfil, ORDER)
        await env.send_event(waiting.run_id, "payment-confirmed", {"ref": "x", "amount_cents": 1})
        failed = await env.drive(waiting.run_id)
        assert failed.status is RunStatus.FAILED
        assert failed.error == "PaymentMismatch: paid 1 cents for an order of 2400"
        reserve = next(s for s in await env.history(waiting.run_id) if s.key == "reserve-stock")
        assert reserve.status is StepStatus.COMPENSATED
        assert await env.store.kv_keys("order-fulfilment") == []


async def test_unpaid_order_times_out_after_a_week(make_env: EnvFactory) -> None:
    async with make_env(fulfil, release_stock) as env:
        waiting = await env.execute(fulfil, ORDER)
        timed_out = await env.drive(waiting.run_id, through_event_timeouts=True)
        assert timed_out.status is RunStatus.FAILED
        assert (timed_out.error or "").startswith("EventTimeout")
        assert await env.store.kv_keys("order-fulfilment") == []


# -- expense approval: a human decision with a timeout, then an escalation -----------

CLAIM = ExpenseClaim(
    id="exp-7",
    employee="sam",
    amount_cents=12850,
    description="client dinner",
    approver="dana",
    escalate_to="lee",
)
EXPENSES = "expense-approval"


async def kv_value(env: WorkflowTestEnv, namespace: str, key: str) -> Any:
    found, value = await env.store.kv_get(namespace, key)
    assert found, f"{namespace}: no key {key!r}"
    return value


async def test_approved_claim_is_paid_out(make_env: EnvFactory) -> None:
    async with make_env(approve_expense) as env:
        waiting = await env.execute(approve_expense, CLAIM)
        assert waiting.status is RunStatus.WAITING
        assert waiting.waiting_event == "decision"
        ask = await kv_value(env, EXPENSES, "outbox/exp-7/ask")
        assert ask == {
            "to": "dana",
            "subject": "Approve sam's expense exp-7 (128.50 EUR): client dinner",
        }
        decision = {"approved": True, "by": "dana", "comment": "fine"}
        await env.send_event(waiting.run_id, "decision", decision)
        done = await env.drive(waiting.run_id)
        assert done.status is RunStatus.COMPLETED
        assert done.output == {
            "claim_id": "exp-7",
            "status": "approved",
            "decided_by": "dana",
            "escalated": False,
            "comment": "fine",
            "payout_id": "po-exp-7",
        }
        assert await kv_value(env, EXPENSES, "payouts/po-exp-7") == {"to": "sam", "cents": 12850}
        told = await kv_value(env, EXPENSES, "outbox/exp-7/outcome")
        assert told == {"to": "sam", "subject": "Your expense exp-7: approved"}


async def test_a_malformed_decision_is_skipped_and_the_deadline_kept(make_env: EnvFactory) -> None:
    async with make_env(approve_expense) as env:
        asked_at = env.clock.now()
        waiting = await env.execute(approve_expense, CLAIM)
        assert waiting.ready_at == asked_at + timedelta(days=3)
        env.clock.advance(timedelta(days=1))
        await env.send_event(waiting.run_id, "decision", {"approve": "yes"})  # a typo
        still = await env.drive(waiting.run_id)
        assert still.status is RunStatus.WAITING
        assert still.waiting_event == "decision"
        assert still.ready_at == asked_at + timedelta(days=3)  # not 3 days from the typo
        await env.send_event(
            waiting.run_id, "decision", {"approved": False, "by": "dana", "comment": "no"}
        )
        done = await env.drive(waiting.run_id)
        assert done.status is RunStatus.COMPLETED
        assert done.output["status"] == "rejected"
        assert done.output["decided_by"] == "dana"
        assert done.output["payout_id"] is None
        assert await env.store.kv_keys(EXPENSES, "payouts/") == []
        waits = [s for s in await env.history(waiting.run_id) if s.key.startswith("@event")]
        assert [(w.key, w.status) for w in waits] == [("@event:decision#1", StepStatus.COMPLETED)]
        typo, decision = await env.store.list_events(waiting.run_id)
        assert "approved: Field required" in typo["rejected"]  # set aside, with the reason
        assert decision["consumed_by"] == "@event:decision#1" and decision["rejected"] is None


async def test_undecided_claim_is_escalated_to_the_manager(make_env: EnvFactory) -> None:
    async with make_env(approve_expense) as env:
        asked_at = env.clock.now()
        waiting = await env.execute(approve_expense, CLAIM)
        assert waiting.ready_at is not None
        env.clock.set(waiting.ready_at)  # 3 days without an answer
        escalated = await env.drive(waiting.run_id)
        assert escalated.status is RunStatus.WAITING
        assert escalated.waiting_event == "decision"
        assert escalated.ready_at == asked_at + timedelta(days=5)
        escalation = await kv_value(env, EXPENSES, "outbox/exp-7/escalate")
        assert escalation["to"] == "lee"
        assert escalation["subject"].startswith("[escalated] Approve sam's expense exp-7")
        await env.send_event(waiting.run_id, "decision", {"approved": True, "by": "lee"})
        done = await env.drive(waiting.run_id)
        assert done.status is RunStatus.COMPLETED
        assert done.output["status"] == "approved"
        assert done.output["decided_by"] == "lee"
        assert done.output["escalated"] is True


async def test_claim_nobody_decides_expires_after_both_timeouts(make_env: EnvFactory) -> None:
    async with make_env(approve_expense) as env:
        asked_at = env.clock.now()
        run = await env.engine.start(approve_expense, CLAIM)
        done = await env.drive(run.run_id, through_event_timeouts=True)
        assert done.status is RunStatus.COMPLETED
        assert done.output == {
            "claim_id": "exp-7",
            "status": "expired",
            "decided_by": None,
            "escalated": True,
            "comment": "no decision in time",
            "payout_id": None,
        }
        steps = {s.key: s for s in await env.history(run.run_id)}
        assert steps["escalate"].completed_at == asked_at + timedelta(days=3)
        assert steps["tell-employee"].completed_at == asked_at + timedelta(days=5)
        assert "pay-out" not in steps
        told = await kv_value(env, EXPENSES, "outbox/exp-7/outcome")
        assert told["subject"] == "Your expense exp-7: expired"


# -- trial reminders: sleeps of days, in virtual time ----------------------------------

TRIAL = Trial(account_id="acme", email="billing@acme.example", plan="team")
TRIALS = "trial-reminders"


async def test_reminders_go_out_after_days_of_sleep(make_env: EnvFactory) -> None:
    async with make_env(remind) as env:
        run = await env.engine.start(remind, TRIAL)
        day0 = env.clock.now()
        asleep = await env.engine.run_segment(run.run_id)
        assert asleep.status is RunStatus.WAITING
        assert asleep.waiting_event is None
        assert asleep.ready_at == day0 + timedelta(days=11)

        env.clock.advance(timedelta(days=10))  # a timer that fires early: back to sleep
        early = await env.engine.run_segment(run.run_id)
        assert early.status is RunStatus.WAITING
        assert early.ready_at == day0 + timedelta(days=11)
        assert await env.store.kv_keys(TRIALS, "outbox/") == []

        env.clock.set(day0 + timedelta(days=11))
        reminded = await env.engine.run_segment(run.run_id)
        assert reminded.status is RunStatus.WAITING
        assert reminded.ready_at == day0 + timedelta(days=13)
        assert await env.store.kv_keys(TRIALS, "outbox/") == ["outbox/acme/reminder"]

        done = await env.drive(run.run_id)
        assert done.status is RunStatus.COMPLETED
        report = TrialReport.model_validate(done.output)
        assert not report.subscribed
        assert [(n.kind, n.due_at) for n in report.notices] == [
            ("reminder", day0 + timedelta(days=11)),
            ("final-notice", day0 + timedelta(days=13)),
        ]
        assert report.notices[1].subject == "Last reminder: your team trial ends tomorrow"
        sent = {s.key: s.completed_at for s in await env.history(run.run_id)}
        assert sent["send-reminder"] == day0 + timedelta(days=11)
        assert sent["send-final-notice"] == day0 + timedelta(days=13)
        assert sent["check-subscription#2"] == day0 + timedelta(days=13)
        assert await env.store.kv_keys(TRIALS, "outbox/") == [
            "outbox/acme/final-notice",
            "outbox/acme/reminder",
        ]


async def test_subscribing_stops_the_reminders(make_env: EnvFactory) -> None:
    async with make_env(remind) as env:
        run = await env.engine.start(remind, TRIAL)
        asleep = await env.engine.run_segment(run.run_id)
        assert asleep.ready_at is not None
        env.clock.set(asleep.ready_at)
        reminded = await env.engine.run_segment(run.run_id)  # the reminder goes out
        assert reminded.status is RunStatus.WAITING
        await env.store.kv_set(TRIALS, "subscriptions/acme", {"plan": "team"}, now=env.clock.now())
        done = await env.drive(run.run_id)
        assert done.status is RunStatus.COMPLETED
        report = TrialReport.model_validate(done.output)
        assert report.subscribed
        assert [n.kind for n in report.notices] == ["reminder"]
        assert await env.store.kv_keys(TRIALS, "outbox/") == ["outbox/acme/reminder"]


# -- shipping quotes: a fan-out over a real, flaky HTTP server -------------------------

PARCEL = Parcel(weight_grams=2300, destination="DE")


def quote_request(service: QuoteService, carriers: list[str], timeout: float = 0.3) -> QuoteRequest:
    return QuoteRequest(
        order_id="1001",
        service_url=service.url,
        parcel=PARCEL,
        carriers=carriers,
        request_timeout=timedelta(seconds=timeout),  # a "hang" fault costs this, in real time
    )


async def test_quotes_are_fetched_in_parallel_and_failures_retried(make_env: EnvFactory) -> None:
    faults: dict[str, list[Fault]] = {"dhl": ["error", "error"], "ups": ["hang"]}
    with QuoteService(faults) as service:
        async with make_env(compare_quotes) as env:
            request = quote_request(service, ["dhl", "ups", "gls", "dpd"])
            done = await env.execute(compare_quotes, request)
            assert done.status is RunStatus.COMPLETED
            assert service.hits == {"dhl": 3, "ups": 2, "gls": 1, "dpd": 1}
            # In parallel: every carrier was asked once before any was asked again.
            assert sorted(service.requests[:4]) == ["dhl", "dpd", "gls", "ups"]
            attempts = {s.key: (s.status, s.attempts) for s in await env.history(done.run_id)}
            assert attempts == {
                "fetch-quote[dhl]": (StepStatus.COMPLETED, 3),
                "fetch-quote[ups]": (StepStatus.COMPLETED, 2),
                "fetch-quote[gls]": (StepStatus.COMPLETED, 1),
                "fetch-quote[dpd]": (StepStatus.COMPLETED, 1),
            }
    comparison = QuoteComparison.model_validate(done.output)
    assert comparison.cheapest.model_dump() == quote("dhl", 2300)  # the flaky one: 8.62 EUR
    assert [q.carrier for q in comparison.quotes] == ["dhl", "dpd", "gls", "ups"]
    assert comparison.unavailable == []


async def test_a_carrier_that_stays_down_is_reported_unavailable(make_env: EnvFactory) -> None:
    with QuoteService({"dpd": ["error"] * 4}) as service:
        async with make_env(compare_quotes) as env:
            done = await env.execute(compare_quotes, quote_request(service, ["dhl", "acme", "dpd"]))
            assert done.status is RunStatus.COMPLETED
            assert service.hits == {"dhl": 1, "acme": 1, "dpd": 4}  # a 404 is not retried
            steps = {s.key: s for s in await env.history(done.run_id)}
    assert done.output["unavailable"] == ["acme", "dpd"]
    assert [q["carrier"] for q in done.output["quotes"]] == ["dhl"]
    acme, dpd = steps["fetch-quote[acme]"], steps["fetch-quote[dpd]"]
    assert (acme.status, acme.attempts) == (StepStatus.FAILED, 1)
    assert (acme.error or "").startswith("CarrierRejected: acme: HTTP 404")
    assert (dpd.status, dpd.attempts) == (StepStatus.FAILED, 4)
    assert "503 Service Unavailable" in (dpd.error or "")


async def test_no_quote_at_all_fails_the_run(make_env: EnvFactory) -> None:
    with QuoteService() as service:
        async with make_env(compare_quotes) as env:
            failed = await env.execute(compare_quotes, quote_request(service, ["acme"]))
    assert failed.status is RunStatus.FAILED
    assert failed.error == "NoQuotes: no carrier quoted order 1001: acme"


async def test_quotes_already_fetched_are_not_fetched_again_on_resume(make_env: EnvFactory) -> None:
    hits_when_recorded: dict[str, int] = {}

    def recorded(run_id: uuid.UUID, step: StepState) -> None:
        if step.status is StepStatus.COMPLETED:
            hits_when_recorded[step.key] = service.hits[step.key.removeprefix("fetch-quote[")[:-1]]

    with QuoteService({"ups": ["hang"]}) as service:
        # Every retry backoff suspends the run, as a long one would: ups's timeout ends the
        # first segment (by then dhl and gls have answered); a new engine resumes it.
        options: dict[str, Any] = {"max_inline_backoff": timedelta(0), "on_record": recorded}
        async with make_env(compare_quotes, **options) as env:
            run = await env.engine.start(
                compare_quotes, quote_request(service, ["dhl", "ups", "gls"], timeout=0.5)
            )
            first = await env.engine.run_segment(run.run_id)
            assert first.status is RunStatus.WAITING
            assert first.waiting_event is None  # a retry backoff
            steps = {s.key: s for s in await env.history(run.run_id)}
            assert steps["fetch-quote[ups]"].status is StepStatus.RETRYING
            assert (steps["fetch-quote[ups]"].error or "").startswith("ReadTimeout")
            assert {k for k, s in steps.items() if s.status is StepStatus.COMPLETED} == {
                "fetch-quote[dhl]",
                "fetch-quote[gls]",
            }

            restarted = Engine(env.store, Registry(compare_quotes), clock=env.clock, **options)
            try:
                done = await WorkflowTestEnv(restarted, env.clock).drive(run.run_id)
            finally:
                await restarted.close()
            assert done.status is RunStatus.COMPLETED
    assert service.hits == {"dhl": 1, "ups": 2, "gls": 1}
    # No carrier was asked again once its quote was recorded.
    assert hits_when_recorded == {
        "fetch-quote[dhl]": 1,
        "fetch-quote[ups]": 2,
        "fetch-quote[gls]": 1,
    }
    assert [q["carrier"] for q in done.output["quotes"]] == ["dhl", "gls", "ups"]


# -- every manifest is a valid WorkflowRun of its example's workflow ---------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "workflow.py").is_file())
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def test_the_examples_are_all_here() -> None:
    expected = {"orders", "expense_approval", "trial_reminders", "shipping_quotes"}
    assert expected <= set(EXAMPLE_NAMES)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_manifest_is_a_valid_run_of_its_workflow(name: str) -> None:
    text = (EXAMPLES / name / "run.yaml").read_text()
    assert f"kubectl apply -f examples/{name}/run.yaml" in text.split("apiVersion:")[0]
    (manifest,) = yaml.safe_load_all(text)
    assert manifest["apiVersion"] == f"{GROUP}/{VERSION}"
    assert manifest["kind"] == "WorkflowRun"
    assert DNS_SUBDOMAIN.fullmatch(manifest["metadata"]["name"])
    spec = WorkflowRunSpec.model_validate(manifest["spec"])
    module = importlib.import_module(f"examples.{name}.workflow")
    assert module.__doc__, f"examples/{name}/workflow.py needs a docstring"
    registry = Registry.from_modules([module])
    definition = (
        registry.active(spec.workflow)
        if spec.version is None
        else registry.get(spec.workflow, spec.version)
    )
    assert definition is not None, f"{name}: no workflow {spec.workflow!r} v{spec.version}"
    TypeAdapter(definition.input_type).validate_python(spec.input)
