"""Expense approval: a human decision, awaited durably, escalated when it does not come.

An employee files an expense claim. The workflow asks the approver, then waits for a
``decision`` event, for days if need be, without holding a process: the wait is a record
in PostgreSQL and the run resumes when the event arrives (with the operator,
``kubectl annotate wfr <run> event.kflow.io/decision='{"approved":true,"by":"dana"}'``).
With no decision within ``decide_within`` (3 days by default) the claim goes to the
approver's manager, who has ``escalate_within`` (2 days); after that it is rejected
automatically. An approved claim is paid out, and the employee hears the outcome.

Shows: ``ctx.wait_for_event`` with a timeout and a typed payload; `EventTimeout`; a
malformed payload set aside by kflow without moving the deadline (the run's status
names the field at fault); a second wait on the same event name (a decision sent late,
during the escalation, waits in the run's inbox and is not lost). Who may
decide is who may annotate the WorkflowRun: Kubernetes RBAC. Messages and pay-outs go to
the workflow's KV store, standing in for a mailer and a payments service.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field

from kflow import EventTimeout, WorkflowContext, workflow


class ExpenseClaim(BaseModel):
    id: str
    employee: str
    amount_cents: int = Field(gt=0)
    currency: str = "EUR"
    description: str
    approver: str
    escalate_to: str
    """The approver's manager, asked when the approver does not decide in time."""
    decide_within: timedelta = timedelta(days=3)
    """ISO 8601 (``P3D``, ``PT30S``) or seconds, like every duration in the input."""
    escalate_within: timedelta = timedelta(days=2)


class Decision(BaseModel):
    """The payload of the ``decision`` event."""

    approved: bool
    by: str
    comment: str = ""


class Message(BaseModel):
    to: str
    subject: str


Verdict = Literal["approved", "rejected", "expired"]


class ExpenseOutcome(BaseModel):
    claim_id: str
    status: Verdict
    decided_by: str | None
    escalated: bool
    comment: str = ""
    payout_id: str | None = None


async def send(ctx: WorkflowContext, outbox_key: str, message: Message) -> None:
    await ctx.kv.set(f"outbox/{outbox_key}", message)


async def pay_out(ctx: WorkflowContext, claim: ExpenseClaim) -> str:
    payout_id = f"po-{claim.id}"
    # Keyed by the claim, so a retried or re-run step pays once.
    await ctx.kv.set(f"payouts/{payout_id}", {"to": claim.employee, "cents": claim.amount_cents})
    return payout_id


async def wait_for_decision(ctx: WorkflowContext, within: timedelta) -> Decision | None:
    """The next well-formed decision arriving within ``within``, or None. A mistyped
    decision is set aside by kflow (shown on the run's status, with the field at fault)
    and the wait goes on, with the same deadline."""
    try:
        return await ctx.wait_for_event("decision", timeout=within, type=Decision)
    except EventTimeout:
        return None


def verdict(decision: Decision | None) -> Verdict:
    if decision is None:
        return "expired"
    return "approved" if decision.approved else "rejected"


@workflow(
    name="expense-approval",
    version=1,
    steps=["ask-approver", "escalate", "pay-out", "tell-employee"],
    events=["decision"],
)
async def approve_expense(ctx: WorkflowContext, claim: ExpenseClaim) -> ExpenseOutcome:
    amount = f"{claim.amount_cents / 100:.2f} {claim.currency}"
    subject = f"Approve {claim.employee}'s expense {claim.id} ({amount}): {claim.description}"
    await ctx.step(
        "ask-approver", send, ctx, f"{claim.id}/ask", Message(to=claim.approver, subject=subject)
    )
    decision = await wait_for_decision(ctx, claim.decide_within)
    escalated = decision is None
    if decision is None:
        escalation = Message(to=claim.escalate_to, subject=f"[escalated] {subject}")
        await ctx.step("escalate", send, ctx, f"{claim.id}/escalate", escalation)
        decision = await wait_for_decision(ctx, claim.escalate_within)

    payout_id: str | None = None
    if decision is not None and decision.approved:
        payout_id = await ctx.step("pay-out", pay_out, ctx, claim)
    outcome = ExpenseOutcome(
        claim_id=claim.id,
        status=verdict(decision),
        decided_by=decision.by if decision else None,
        escalated=escalated,
        comment=decision.comment if decision else "no decision in time",
        payout_id=payout_id,
    )
    news = Message(to=claim.employee, subject=f"Your expense {claim.id}: {outcome.status}")
    await ctx.step("tell-employee", send, ctx, f"{claim.id}/outcome", news)
    return outcome
