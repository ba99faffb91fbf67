"""The main job, until the operator lands: run the example order saga through the engine.

Starts a throw-away PostgreSQL, then drives three orders through
``examples/orders/workflow.py`` in virtual time (the 30-minute hold passes at once):
one paid and shipped, one cancelled by an operator (its reservation released by the
durable compensation), one paid the wrong amount (compensated by the handler itself).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.orders.workflow import Order, fulfil, release_stock

from kflow.localpg import LocalPostgres
from kflow.testing import WorkflowTestEnv


def show(title: str, outcome: object) -> None:
    print(f"\n== {title}\n   {outcome}")


async def main() -> int:
    with LocalPostgres() as pg:
        print(f"PostgreSQL on {pg.dsn}")
        async with WorkflowTestEnv.start(fulfil, release_stock, dsn=pg.dsn) as env:
            order = Order(id="o-42", sku="book", quantity=2, amount_cents=2400)
            waiting = await env.execute(fulfil, order)
            show("o-42 started; after the 30-minute hold it waits for payment", waiting)
            await env.send_event(
                waiting.run_id, "payment-confirmed", {"ref": "ch_1", "amount_cents": 2400}
            )
            done = await env.drive(waiting.run_id)
            show("o-42 paid -> shipped", done)
            for step in await env.history(done.run_id):
                print(f"   {step.key:28} {step.status:10} attempts={step.attempts}")

            other = await env.execute(fulfil, order.model_copy(update={"id": "o-43"}))
            cancelled = await env.engine.cancel(other.run_id, "customer changed their mind")
            show("o-43 cancelled -> reservation released by the durable compensation", cancelled)

            third = await env.execute(fulfil, order.model_copy(update={"id": "o-44"}))
            await env.send_event(
                third.run_id, "payment-confirmed", {"ref": "ch_9", "amount_cents": 1}
            )
            failed = await env.drive(third.run_id)
            show("o-44 paid the wrong amount -> compensated and failed", failed)
            left = await env.engine.store.kv_keys("order-fulfilment", "reservations/")
            print(f"\nreservations still held: {left}  (only o-42's, which shipped)")
            ok = (done.status, cancelled.status, failed.status) == (
                "Completed",
                "Compensated",
                "Failed",
            )
            print("\nDEMO OK" if ok and left == ["reservations/rsv-o-42"] else "\nDEMO FAILED")
            return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
