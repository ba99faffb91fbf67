"""Trial reminders: durable sleeps of days between the notices of a free trial.

A customer starts a 14-day trial. The workflow sleeps 11 days, reminds them that the
trial ends soon, sleeps 2 more days and sends a final notice, the day before it ends,
unless they have subscribed meanwhile: a step asks the billing system before each
notice. While it sleeps, a run holds no process, task or Pod: its wake time is a row in
PostgreSQL, and an operator that restarts re-arms the timer from it. The sleep lengths
are part of the input (days by default), so the demo manifest can use seconds.

Shows: ``ctx.sleep`` over days; a read that decides the path made inside a step (its
answer is recorded, so a replay takes the same path even if the answer has changed
since); ``ctx.workflow_time()``, the replay-safe clock, stamping each notice with the time
it was due; a step name called twice (``check-subscription``, then
``check-subscription#2``). The billing system and the mailer are the workflow's KV
store here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from kflow import WorkflowContext, workflow


class Trial(BaseModel):
    account_id: str
    email: str
    plan: str
    remind_after: timedelta = timedelta(days=11)
    """From the start of the trial to the reminder: ISO 8601 (``P11D``, ``PT10S``) or seconds."""
    final_notice_after: timedelta = timedelta(days=2)
    """From the reminder to the final notice."""


class Notice(BaseModel):
    kind: Literal["reminder", "final-notice"]
    to: str
    subject: str
    due_at: datetime


class TrialReport(BaseModel):
    account_id: str
    subscribed: bool
    notices: list[Notice]


async def has_subscribed(ctx: WorkflowContext, account_id: str) -> bool:
    return await ctx.kv.get(f"subscriptions/{account_id}") is not None


async def send_notice(ctx: WorkflowContext, account_id: str, notice: Notice) -> Notice:
    # One outbox key per notice: a step re-run after a crash overwrites, never duplicates.
    await ctx.kv.set(f"outbox/{account_id}/{notice.kind}", notice)
    return notice


@workflow(
    name="trial-reminders",
    version=1,
    steps=["check-subscription", "send-reminder", "send-final-notice"],
)
async def remind(ctx: WorkflowContext, trial: Trial) -> TrialReport:
    await ctx.sleep(trial.remind_after)
    if await ctx.step("check-subscription", has_subscribed, ctx, trial.account_id):
        return TrialReport(account_id=trial.account_id, subscribed=True, notices=[])
    reminder = Notice(
        kind="reminder",
        to=trial.email,
        subject=f"Your {trial.plan} trial ends soon",
        due_at=ctx.workflow_time(),  # the sleep's end, not "now": the same on every replay
    )
    await ctx.step("send-reminder", send_notice, ctx, trial.account_id, reminder)

    await ctx.sleep(trial.final_notice_after)
    if await ctx.step("check-subscription", has_subscribed, ctx, trial.account_id):
        return TrialReport(account_id=trial.account_id, subscribed=True, notices=[reminder])
    final = Notice(
        kind="final-notice",
        to=trial.email,
        subject=f"Last reminder: your {trial.plan} trial ends tomorrow",
        due_at=ctx.workflow_time(),
    )
    await ctx.step("send-final-notice", send_notice, ctx, trial.account_id, final)
    return TrialReport(account_id=trial.account_id, subscribed=False, notices=[reminder, final])
