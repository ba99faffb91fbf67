"""The examples in examples/ run end to end (their scenarios are the demo's)."""

from __future__ import annotations

import pytest
from examples.orders.workflow import Order, fulfil, release_stock

from kflow import RunStatus, StepStatus

pytestmark = pytest.mark.integration

ORDER = Order(id="o-1", sku="book", quantity=2, amount_cents=2400)
RESERVED = "reservations/rsv-o-1"


async def test_order_is_held_paid_and_shipped(make_env) -> None:
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


async def test_cancelled_order_releases_its_stock(make_env) -> None:
    async with make_env(fulfil, release_stock) as env:
        waiting = await env.execute(fulfil, ORDER)
        assert await env.store.kv_keys("order-fulfilment") == [RESERVED]
        outcome = await env.engine.cancel(waiting.run_id, "changed my mind")
        assert outcome.status is RunStatus.COMPENSATED
        assert await env.store.kv_keys("order-fulfilment") == []


async def test_wrong_payment_compensates_and_fails(make_env) -> None:
    async with make_env(fulfil, release_stock) as env:
        waiting = await env.execute(fulfil, ORDER)
        await env.send_event(waiting.run_id, "payment-confirmed", {"ref": "x", "amount_cents": 1})
        failed = await env.drive(waiting.run_id)
        assert failed.status is RunStatus.FAILED
        assert failed.error == "PaymentMismatch: paid 1 cents for an order of 2400"
        reserve = next(s for s in await env.history(waiting.run_id) if s.key == "reserve-stock")
        assert reserve.status is StepStatus.COMPENSATED
        assert await env.store.kv_keys("order-fulfilment") == []


async def test_unpaid_order_times_out_after_a_week(make_env) -> None:
    async with make_env(fulfil, release_stock) as env:
        waiting = await env.execute(fulfil, ORDER)
        timed_out = await env.drive(waiting.run_id, through_event_timeouts=True)
        assert timed_out.status is RunStatus.FAILED
        assert (timed_out.error or "").startswith("EventTimeout")
        assert await env.store.kv_keys("order-fulfilment") == []
