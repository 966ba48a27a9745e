"""A fake Stripe API for end-to-end tests: a real HTTP server on a loopback port (a thread in the
test process) answering the endpoints darkbloom calls with Stripe's JSON shapes, honouring
``Idempotency-Key`` as Stripe does (same key: same answer, nothing done twice), checking the
bearer secret key, and recording every request so tests can look at what was sent.

Tests steer it: ``pay`` completes a Checkout Session, ``make_ready`` finishes a Connect account's
onboarding, ``fail`` makes the next calls to an endpoint answer a Stripe error, ``drop`` closes
the connection without an answer (a network failure), and ``event`` builds a webhook body.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class _Failure:
    status: int
    code: str
    times: int
    drop: bool = False


@dataclass
class _State:
    checkout: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    payouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotent: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, _Failure] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)


def _id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(8)}"


def _metadata(form: dict[str, str]) -> dict[str, str]:
    return {key[len("metadata["):-1]: value for key, value in form.items()
            if key.startswith("metadata[") and key.endswith("]")}


class FakeStripe:
    def __init__(self, secret_key: str) -> None:
        self.secret_key = secret_key
        self.state = _State()
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeStripe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- steering ---------------------------------------------------------------------------

    def fail(self, route: str, status: int = 402, code: str = "insufficient_funds", times: int = 1) -> None:
        """The next ``times`` calls to ``route`` (e.g. ``"POST /v1/transfers"``) answer an error."""
        with self.lock:
            self.state.failures[route] = _Failure(status, code, times)

    def drop(self, route: str, times: int = 1) -> None:
        """The next ``times`` calls to ``route`` get no answer at all (the connection closes)."""
        with self.lock:
            self.state.failures[route] = _Failure(0, "", times, drop=True)

    def calls(self, route: str | None = None) -> list[Call]:
        with self.lock:
            return [c for c in self.state.calls if route is None or f"{c.method} {c.path}" == route
                    or (route.endswith("*") and f"{c.method} {c.path}".startswith(route[:-1]))]

    def pay(self, session_id: str, amount_total: int | None = None) -> dict[str, Any]:
        """The customer paid: the session is ``complete``/``paid`` with a PaymentIntent."""
        with self.lock:
            session = self.state.checkout[session_id]
            session.update(status="complete", payment_status="paid",
                           payment_intent=session["payment_intent"] or _id("pi"))
            if amount_total is not None:
                session["amount_total"] = amount_total
            return _copy(session)

    def expire(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            session = self.state.checkout[session_id]
            session["status"] = "expired"
            return _copy(session)

    def make_ready(self, account_id: str, *, card: bool = False, debit: bool = True) -> dict[str, Any]:
        """Onboarding finished: payouts enabled, a bank account (or a debit/credit card) attached."""
        with self.lock:
            account = self.state.accounts[account_id]
            external = ({"id": _id("card"), "object": "card", "brand": "visa", "last4": "4242",
                         "funding": "debit" if debit else "credit", "default_for_currency": True}
                        if card else
                        {"id": _id("ba"), "object": "bank_account", "bank_name": "STRIPE TEST BANK",
                         "last4": "6789", "default_for_currency": True})
            account.update(payouts_enabled=True, charges_enabled=True, details_submitted=True)
            account["requirements"] = {"currently_due": [], "disabled_reason": None}
            account["external_accounts"] = {"object": "list", "data": [external], "has_more": False}
            return _copy(account)

    def account(self, account_id: str) -> dict[str, Any]:
        with self.lock:
            return _copy(self.state.accounts[account_id])

    def payout(self, payout_id: str, **changes: Any) -> dict[str, Any]:
        with self.lock:
            payout = self.state.payouts[payout_id]
            payout.update(changes)
            return _copy(payout)

    def transfer(self, transfer_id: str, **changes: Any) -> dict[str, Any]:
        with self.lock:
            transfer = self.state.transfers[transfer_id]
            transfer.update(changes)
            return _copy(transfer)

    @staticmethod
    def event(kind: str, obj: dict[str, Any], account: str | None = None, created: int | None = None,
              event_id: str | None = None) -> bytes:
        """A webhook body as Stripe sends it."""
        body: dict[str, Any] = {"id": event_id or f"evt_{secrets.token_hex(12)}", "object": "event",
                                "api_version": "2025-01-27.acacia", "created": created or int(time.time()),
                                "livemode": False, "pending_webhooks": 1, "type": kind,
                                "data": {"object": obj}}
        if account:
            body["account"] = account
        return json.dumps(body).encode()

    # --- the API ----------------------------------------------------------------------------

    def _answer(self, method: str, path: str, query: dict[str, str], form: dict[str, str],
                headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        state, now = self.state, int(time.time())
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/v1/checkout/sessions":
            session: dict[str, Any] = {
                "id": _id("cs"), "object": "checkout.session", "mode": form.get("mode"),
                "amount_total": int(form["line_items[0][price_data][unit_amount]"])
                * int(form.get("line_items[0][quantity]", "1")),
                "currency": form["line_items[0][price_data][currency]"], "status": "open",
                "payment_status": "unpaid", "payment_intent": None,
                "client_reference_id": form.get("client_reference_id"),
                "customer_email": form.get("customer_email"), "metadata": _metadata(form),
                "success_url": form.get("success_url"), "cancel_url": form.get("cancel_url"),
                "created": now, "expires_at": now + 86400}
            session["url"] = f"https://checkout.stripe.com/c/pay/{session['id']}"
            state.checkout[session["id"]] = session
            return 200, session
        if method == "GET" and parts[:3] == ["v1", "checkout", "sessions"] and len(parts) == 4:
            found = state.checkout.get(parts[3])
            return (200, found) if found else _missing("checkout session", parts[3])
        if method == "POST" and path == "/v1/accounts":
            account: dict[str, Any] = {
                "id": _id("acct"), "object": "account", "type": form.get("type"),
                "country": form.get("country"), "email": form.get("email"),
                "business_type": form.get("business_type"), "metadata": _metadata(form),
                "charges_enabled": False, "payouts_enabled": False, "details_submitted": False,
                "requirements": {"currently_due": ["external_account", "individual.dob.day"],
                                 "disabled_reason": "requirements.past_due"},
                "external_accounts": {"object": "list", "data": [], "has_more": False}, "created": now}
            state.accounts[account["id"]] = account
            return 200, account
        if method == "GET" and parts[:2] == ["v1", "accounts"] and len(parts) == 3:
            found = state.accounts.get(parts[2])
            return (200, found) if found else _missing("account", parts[2])
        if method == "POST" and path == "/v1/account_links":
            if form.get("account") not in state.accounts:
                return _missing("account", form.get("account", ""))
            return 200, {"object": "account_link", "created": now, "expires_at": now + 300,
                         "url": f"https://connect.stripe.com/setup/e/{form['account']}/{secrets.token_hex(6)}"}
        if method == "POST" and path == "/v1/transfers":
            if form.get("destination") not in state.accounts:
                return _missing("account", form.get("destination", ""))
            transfer: dict[str, Any] = {"id": _id("tr"), "object": "transfer", "amount": int(form["amount"]),
                        "currency": form.get("currency"), "destination": form["destination"],
                        "transfer_group": form.get("transfer_group"), "metadata": _metadata(form),
                        "reversed": False, "amount_reversed": 0, "created": now}
            state.transfers[transfer["id"]] = transfer
            return 200, transfer
        if method == "POST" and parts[:2] == ["v1", "transfers"] and len(parts) == 4 \
                and parts[3] == "reversals":
            found_transfer = state.transfers.get(parts[2])
            if found_transfer is None:
                return _missing("transfer", parts[2])
            left = found_transfer["amount"] - found_transfer["amount_reversed"]
            amount = int(form.get("amount", left))
            if amount <= 0 or amount > left:
                return 400, _error("invalid_request_error", "the transfer has nothing left to reverse",
                                   "transfer_already_reversed")
            found_transfer["amount_reversed"] += amount
            found_transfer["reversed"] = found_transfer["amount_reversed"] == found_transfer["amount"]
            return 200, {"id": _id("trr"), "object": "transfer_reversal", "amount": amount,
                         "currency": found_transfer["currency"], "transfer": parts[2],
                         "metadata": _metadata(form), "created": now}
        if method == "GET" and path == "/v1/transfers":
            group = query.get("transfer_group")
            data = [t for t in state.transfers.values() if group is None or t["transfer_group"] == group]
            return 200, {"object": "list", "url": "/v1/transfers", "has_more": False,
                         "data": data[: int(query.get("limit", "10"))]}
        if method == "POST" and path == "/v1/payouts":
            on_behalf = headers.get("stripe-account", "")
            if on_behalf not in state.accounts:
                return 400, _error("invalid_request_error", "Stripe-Account header required", "")
            arrival = now + (1800 if form.get("method") == "instant" else 2 * 86400)
            payout: dict[str, Any] = {"id": _id("po"), "object": "payout", "amount": int(form["amount"]),
                      "currency": form.get("currency"), "method": form.get("method", "standard"),
                      "status": "pending", "arrival_date": arrival, "metadata": _metadata(form),
                      "failure_code": None, "failure_message": None, "created": now,
                      "destination": state.accounts[on_behalf]["external_accounts"]["data"][0]["id"]
                      if state.accounts[on_behalf]["external_accounts"]["data"] else None}
            state.payouts[payout["id"]] = payout
            return 200, payout
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path}).", "")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                form = dict(parse_qsl(raw, keep_blank_values=True))
                query = dict(parse_qsl(split.query, keep_blank_values=True))
                headers = {k.lower(): v for k, v in self.headers.items()}
                route = f"{method} {split.path}"
                with fake.lock:
                    fake.state.calls.append(Call(method, split.path, headers, {**query, **form}))
                    failure = fake.state.failures.get(route)
                    if failure is not None:
                        failure.times -= 1
                        if failure.times <= 0:
                            del fake.state.failures[route]
                if failure is not None and failure.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if headers.get("authorization") != f"Bearer {fake.secret_key}":
                    status, body = 401, _error("invalid_request_error", "Invalid API Key provided", "")
                elif failure is not None:
                    status, body = failure.status, _error("invalid_request_error", "injected failure",
                                                          failure.code)
                else:
                    key = headers.get("idempotency-key")
                    with fake.lock:
                        if key and (key, route) in fake.state.idempotent:
                            status, body = fake.state.idempotent[(key, route)]
                        else:
                            status, body = fake._answer(method, split.path, query, form, headers)
                            if key and method == "POST":
                                fake.state.idempotent[(key, route)] = (status, body)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_" + secrets.token_hex(6))
                if status >= 400:
                    self.send_header("stripe-should-retry", "false")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy a test can keep (the server's own objects change under it)."""
    return dict(json.loads(json.dumps(obj)))


def _error(kind: str, message: str, code: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, **({"code": code} if code else {})}}


def _missing(what: str, ident: str) -> tuple[int, dict[str, Any]]:
    return 404, _error("invalid_request_error", f"No such {what}: '{ident}'", "resource_missing")
