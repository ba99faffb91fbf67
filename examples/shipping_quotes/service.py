"""A carrier-rates API for the shipping-quotes example, unreliable on purpose.

``GET /carriers/<carrier>/quote?weight_grams=1200&destination=DE`` answers
``{"carrier": "dhl", "price_cents": 741, "currency": "EUR", "days": 2}``; carriers it
does not know get 404. Before answering a carrier's requests normally it plays that
carrier's script of faults, one per request: ``"error"`` answers 503, ``"hang"`` answers
nothing for ``hang_seconds``. That gives the workflow's retries and timeouts something to
do. The tests start it in a thread on a free port; for the kubectl demo, run it by hand
(with the demo's faults: dhl fails twice, ups hangs once)::

    python -m examples.shipping_quotes.service --port 8800
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Fault = Literal["error", "hang"]

RATES: dict[str, tuple[int, int, int]] = {
    # carrier: (base price in cents, cents per started kilogram, days to deliver)
    "dhl": (499, 121, 2),
    "ups": (650, 95, 1),
    "gls": (420, 160, 3),
    "dpd": (450, 140, 2),
}

DEMO_FAULTS: dict[str, list[Fault]] = {"dhl": ["error", "error"], "ups": ["hang"]}

_QUOTE_PATH = re.compile(r"/carriers/([a-z0-9-]{1,32})/quote")


class QuoteService:
    """The API on ``host:port`` (0: a free port), served from a thread; counts requests."""

    def __init__(
        self,
        faults: Mapping[str, Sequence[Fault]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hang_seconds: float = 10.0,
        verbose: bool = False,
    ) -> None:
        self.requests: list[str] = []
        """The carrier of each quote request received, in order, faulty ones included."""
        self.hang_seconds = hang_seconds
        self.verbose = verbose
        self._faults = {carrier: list(script) for carrier, script in (faults or {}).items()}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.service = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> QuoteService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging requests at once
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> QuoteService:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def hits(self) -> Counter[str]:
        """Requests received per carrier."""
        return Counter(self.requests)

    def next_fault(self, carrier: str) -> Fault | None:
        """Record a request for ``carrier`` and take its next scripted fault, if any."""
        with self._lock:  # requests are served on concurrent threads
            self.requests.append(carrier)
            script = self._faults.get(carrier)
            return script.pop(0) if script else None

    def hang(self) -> None:
        self._stopping.wait(self.hang_seconds)


def quote(carrier: str, weight_grams: int) -> dict[str, Any]:
    base, per_kg, days = RATES[carrier]
    kilograms = -(-weight_grams // 1000)  # started kilograms
    return {
        "carrier": carrier,
        "price_cents": base + per_kg * kilograms,
        "currency": "EUR",
        "days": days,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging request must not keep the process alive
    service: QuoteService


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        service = self.server.service
        url = urlsplit(self.path)
        match = _QUOTE_PATH.fullmatch(url.path)
        if match is None:
            self._reply(404, {"error": f"no such resource: {url.path}"})
            return
        carrier = match[1]
        try:
            weight_grams = int(parse_qs(url.query)["weight_grams"][0])
        except (KeyError, ValueError):
            self._reply(400, {"error": "weight_grams (an integer) is required"})
            return
        fault = service.next_fault(carrier)
        if fault == "hang":
            service.hang()  # then close without an answer; the client gave up long ago
        elif fault == "error":
            self._reply(503, {"error": f"{carrier} rates are temporarily unavailable"})
        elif carrier not in RATES:
            self._reply(404, {"error": f"unknown carrier {carrier!r}"})
        else:
            self._reply(200, quote(carrier, weight_grams))

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.service.verbose:
            super().log_message(format, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--no-faults", action="store_true", help="answer every request")
    args = parser.parse_args()
    faults = None if args.no_faults else DEMO_FAULTS
    service = QuoteService(faults, host=args.host, port=args.port, verbose=True)
    print(f"carrier rates on {service.url} (faults: {faults or 'none'}); Ctrl-C stops", flush=True)
    with service, contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


if __name__ == "__main__":
    main()
