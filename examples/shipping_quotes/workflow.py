"""Shipping quotes: a parallel fan-out over an HTTP API, each call retried on its own.

At checkout, ask several carriers for the price of shipping one parcel, all at once, and
pick the cheapest. Each carrier is one step, the steps run concurrently under
``asyncio.gather``, and each calls the carrier-rates API (``service.py`` here; its URL is
part of the input) through ``ctx.http``: httpx behind a per-host circuit breaker, with
the request timeout the input asks for. A 503 or a timeout is retried with exponential
backoff; a 4xx (an unknown carrier) fails that step at once, since asking again would get
the same answer. When the API fails for every caller, the breaker opens and attempts fail
at once without a request. A carrier still failing after its retries is reported as
unavailable rather than sinking the comparison; the run fails only if no carrier answers.

Each quote is recorded when it arrives. A run that is resumed (after a backoff too long
to wait in-process, or an operator restart) replays the quotes it has and fetches only
the missing ones.

Shows: ``asyncio.gather`` over steps with explicit keys (``fetch-quote[dhl]``: stable
whatever the order the branches finish in), `RetryPolicy`, `NonRetryable`, catching
`StepFailed`, ``ctx.http`` and ``ctx.set_http_timeout``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from kflow import NonRetryable, RetryPolicy, StepFailed, WorkflowContext, workflow

Carrier = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")]


class Parcel(BaseModel):
    weight_grams: int = Field(gt=0)
    destination: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 country code")


class QuoteRequest(BaseModel):
    order_id: str
    service_url: str = Field(pattern=r"^https?://", description="The carrier-rates API")
    parcel: Parcel
    carriers: list[Carrier] = Field(min_length=1)
    request_timeout: timedelta = timedelta(seconds=5)
    """How long one HTTP request may take: ISO 8601 (``PT2S``) or seconds."""

    @field_validator("carriers")
    @classmethod
    def _distinct(cls, carriers: list[str]) -> list[str]:
        if len(set(carriers)) != len(carriers):
            raise ValueError("carriers must be distinct: each is one step, keyed by its name")
        return carriers


class Quote(BaseModel):
    carrier: str
    price_cents: int
    currency: str
    days: int


class QuoteComparison(BaseModel):
    order_id: str
    cheapest: Quote
    quotes: list[Quote]
    """Cheapest first."""
    unavailable: list[str]


RETRY = RetryPolicy(
    max_attempts=4,
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2,  # waits 1 s, 2 s, 4 s
    max_interval=timedelta(seconds=10),
)


class CarrierRejected(NonRetryable):
    """The API refused the request itself (4xx)."""


class NoQuotes(Exception):
    """No carrier could quote the parcel."""


async def fetch_quote(
    ctx: WorkflowContext, service_url: str, carrier: str, parcel: Parcel
) -> Quote:
    response = await ctx.http.get(
        f"{service_url.rstrip('/')}/carriers/{carrier}/quote",
        params={"weight_grams": parcel.weight_grams, "destination": parcel.destination},
    )
    if response.is_client_error and response.status_code not in (408, 429):
        raise CarrierRejected(f"{carrier}: HTTP {response.status_code} {response.text}")
    response.raise_for_status()  # 5xx, 408, 429: HTTPStatusError, which RETRY retries
    return Quote.model_validate(response.json())


@workflow(name="shipping-quotes", version=1, steps=["fetch-quote"], timeout=timedelta(hours=1))
async def compare_quotes(ctx: WorkflowContext, request: QuoteRequest) -> QuoteComparison:
    # An httpx timeout, rather than a step timeout=: it counts as a failure for the breaker.
    # Per context, not durable: set again on every replay, before any request.
    ctx.set_http_timeout(request.request_timeout)

    async def quote_from(carrier: str) -> Quote | None:
        try:
            return await ctx.step(
                "fetch-quote", fetch_quote, ctx, request.service_url, carrier, request.parcel,
                key=carrier, retry=RETRY,
            )  # fmt: skip
        except StepFailed:
            return None  # recorded as failed: a replay returns None again, without a request

    # gather, not return_exceptions=True: a branch that suspends the run (a long backoff)
    # must end the segment, not come back as a value.
    results = await asyncio.gather(*(quote_from(carrier) for carrier in request.carriers))
    quotes = sorted(
        (q for q in results if q is not None), key=lambda q: (q.price_cents, q.days, q.carrier)
    )
    unavailable = [c for c, q in zip(request.carriers, results, strict=True) if q is None]
    if not quotes:
        raise NoQuotes(f"no carrier quoted order {request.order_id}: {', '.join(unavailable)}")
    return QuoteComparison(
        order_id=request.order_id, cheapest=quotes[0], quotes=quotes, unavailable=unavailable
    )
