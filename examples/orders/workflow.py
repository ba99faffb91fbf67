"""Order fulfilment: a saga with a durable compensation, a sleep and an event wait.

Reserve stock (compensated by releasing it, durably: the compensation is a named
``@compensation`` with JSON arguments, so it survives restarts), hold the reservation
(30 minutes by default) while fraud checks run, wait up to 7 days for the payment
confirmation, then ship. A payment that does not match the order, or none within the
week, releases the reservation and fails the run. The "inventory" is the workflow's
durable KV store, standing in for a real service.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from kflow import (
    EventTimeout,
    NonRetryable,
    RetryPolicy,
    WorkflowContext,
    compensation,
    workflow,
)


class Order(BaseModel):
    id: str
    sku: str
    quantity: int
    amount_cents: int
    hold_seconds: int = 1800
    """How long to hold the reservation before asking for payment (fraud checks)."""


class Reservation(BaseModel):
    id: str
    sku: str
    quantity: int


class Payment(BaseModel):
    ref: str
    amount_cents: int


class Shipment(BaseModel):
    order_id: str
    reservation_id: str
    payment_ref: str


async def reserve(ctx: WorkflowContext, order: Order) -> Reservation:
    reservation = Reservation(id=f"rsv-{order.id}", sku=order.sku, quantity=order.quantity)
    await ctx.kv.set(f"reservations/{reservation.id}", reservation)
    return reservation


@compensation("release-stock")
async def release_stock(ctx: WorkflowContext, reservation: Reservation) -> None:
    await ctx.kv.delete(f"reservations/{reservation.id}")


async def ship(ctx: WorkflowContext, order: Order, reservation: Reservation, ref: str) -> Shipment:
    await ctx.kv.set(f"shipments/{order.id}", {"reservation": reservation.id})
    return Shipment(order_id=order.id, reservation_id=reservation.id, payment_ref=ref)


class PaymentMismatch(NonRetryable):
    pass


@workflow(
    name="order-fulfilment",
    version=1,
    steps=["reserve-stock", "ship"],
    events=["payment-confirmed"],
    timeout=timedelta(days=30),
)
async def fulfil(ctx: WorkflowContext, order: Order) -> Shipment:
    reservation = await ctx.step("reserve-stock", reserve, ctx, order, compensate=release_stock)
    await ctx.sleep(timedelta(seconds=order.hold_seconds))
    try:
        payment = await ctx.wait_for_event(
            "payment-confirmed", timeout=timedelta(days=7), type=Payment
        )
        if payment.amount_cents != order.amount_cents:
            raise PaymentMismatch(
                f"paid {payment.amount_cents} cents for an order of {order.amount_cents}"
            )
    except (EventTimeout, PaymentMismatch):
        await ctx.run_compensation()  # release the stock, then fail the run
        raise
    return await ctx.step(
        "ship", ship, ctx, order, reservation, payment.ref, retry=RetryPolicy(max_attempts=5)
    )
