"""Money a caller can read (api.md §7): balance, usage, provider earnings; and the price list
(api.md §5) with the admin's price setting."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from darkbloom.coordinator.api.auth import (
    AdminDep,
    ApiKeyDep,
    KeyOrProviderTokenDep,
    presented_bearer,
    require_session,
)
from darkbloom.coordinator.api.bodies import read_body
from darkbloom.coordinator.money import MIN_CHARGE_MICRO_USD, format_usd
from darkbloom.coordinator.pricing import MAX_PRICE, Price, PriceBook
from darkbloom.coordinator.store import ledger
from darkbloom.coordinator.store.admin_actions import record_action
from darkbloom.coordinator.store.credentials import lookup_provider_token
from darkbloom.coordinator.store.stripe import list_withdrawals
from darkbloom.coordinator.store.usage import Earnings, earnings, usage_page, utc
from darkbloom.crypto.challenge import TIMESTAMP_FORMAT
from darkbloom.errors import AuthenticationFailed, InvalidRequest, ModelNotFound, NotFound
from darkbloom.inference.request import parse_json_body

router = APIRouter()
_BODY_LIMIT = 64 * 1024


def _stamp(value: datetime) -> str:
    return utc(value).strftime(TIMESTAMP_FORMAT)


def usage_cursor(value: datetime) -> str:
    """A usage row's time to the microsecond, as stored: it is the next page's ``before``, and at
    whole seconds that skipped the rows settled earlier in the same second."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _limit(value: str | None, default: int, most: int) -> int:
    if value is None:
        return default
    # ASCII digits only: str.isdigit() also says yes to "²", which int() refuses (a 500).
    if not (value.isascii() and value.isdigit() and len(value) <= 7) or not 1 <= int(value) <= most:
        raise InvalidRequest(f"limit must be an integer from 1 to {most}", param="limit")
    return int(value)


@router.get("/v1/payments/balance")
async def payments_balance(request: Request, identity: ApiKeyDep) -> dict[str, Any]:
    held = await ledger.balance(request.app.state.sessions, identity.account_id)
    return {"balance_micro_usd": held.balance_micro_usd, "balance_usd": format_usd(held.balance_micro_usd),
            "withdrawable_micro_usd": held.withdrawable_micro_usd,
            "withdrawable_usd": format_usd(held.withdrawable_micro_usd)}


@router.get("/v1/billing/wallet/balance")
async def wallet_balance(request: Request, identity: ApiKeyDep) -> dict[str, int]:
    """The reference's older name for the balance, kept as an alias."""
    held = await ledger.balance(request.app.state.sessions, identity.account_id)
    return {"credit_balance_micro_usd": held.balance_micro_usd}


@router.get("/v1/payments/usage")
async def payments_usage(request: Request, identity: ApiKeyDep) -> dict[str, Any]:
    """Settled requests, newest first; page with ``before`` = the last row's timestamp."""
    limit = _limit(request.query_params.get("limit"), 100, 1000)
    before = None
    if (text := request.query_params.get("before")) is not None:
        try:
            before = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest("before must be an RFC 3339 timestamp", param="before") from None
        if before.tzinfo is None:
            raise InvalidRequest("before must carry a time zone (e.g. Z)", param="before")
        try:  # stored times are UTC, and SQLite compares them as text: compare in UTC
            before = before.astimezone(UTC)
        except OverflowError:
            raise InvalidRequest("before is out of range", param="before") from None
    rows = await usage_page(request.app.state.sessions, identity.account_id, limit, before)
    return {"usage": [{
        "job_id": row.request_id, "request_id": row.request_id, "model": row.model,
        "endpoint": row.endpoint, "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens, "cost_micro_usd": row.cost_micro_usd,
        "status": row.status, "self_routed": row.self_routed, "timestamp": usage_cursor(row.created_at),
    } for row in rows]}


async def _earnings_body(request: Request, account_id: str, found: Earnings, limit: int) -> dict[str, Any]:
    held = await ledger.balance(request.app.state.sessions, account_id)
    return {
        "account_id": account_id,
        "earnings": [{
            "id": row.id, "account_id": row.account_id, "provider_id": row.provider_id,
            "provider_key": row.provider_key, "job_id": row.job_id, "model": row.model,
            "amount_micro_usd": row.amount_micro_usd, "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens, "created_at": _stamp(row.created_at),
        } for row in found.rows],
        "total_micro_usd": found.total_micro_usd, "total_usd": format_usd(found.total_micro_usd),
        "count": found.count, "recent_count": len(found.rows), "history_limit": limit,
        "available_balance_micro_usd": held.balance_micro_usd,
        "available_balance_usd": format_usd(held.balance_micro_usd),
        "withdrawable_balance_micro_usd": held.withdrawable_micro_usd,
        "withdrawable_balance_usd": format_usd(held.withdrawable_micro_usd),
    }


# Recent payouts in the account-earnings answer (newest first): `darkbloom earnings` shows them.
MAX_PAYOUTS = 20


async def _payouts(request: Request, account_id: str) -> list[dict[str, Any]]:
    """The account's newest Stripe withdrawals, as the operator sees them (no Stripe ids)."""
    rows = await list_withdrawals(request.app.state.sessions, account_id, MAX_PAYOUTS)
    return [{"id": row.id, "amount_micro_usd": row.amount_micro_usd,
             "amount_usd": format_usd(row.amount_micro_usd), "fee_micro_usd": row.fee_micro_usd,
             "net_micro_usd": row.net_micro_usd, "net_usd": format_usd(row.net_micro_usd),
             "method": row.method, "status": row.status, "created_at": _stamp(row.created_at),
             "arrival_unix": row.arrival_unix} for row in rows]


@router.get("/v1/provider/account-earnings")
async def account_earnings(request: Request, identity: KeyOrProviderTokenDep) -> dict[str, Any]:
    """The account's provider earnings, balances and recent payouts: an API key, a session, or
    one of the account's provider tokens (`darkbloom earnings` on a linked machine)."""
    limit = _limit(request.query_params.get("limit"), 50, 1000)
    found = await earnings(request.app.state.sessions, identity.account_id, limit)
    return {**await _earnings_body(request, identity.account_id, found, limit),
            "payouts": await _payouts(request, identity.account_id)}


@router.get("/v1/provider/node-earnings")
async def node_earnings(request: Request) -> dict[str, Any]:
    """One machine's earnings, for its own provider token or its account's session (api.md §7:
    public per-node earnings would leak an operator's income)."""
    limit = _limit(request.query_params.get("limit"), 50, 1000)
    provider_key = request.query_params.get("provider_key")
    if not provider_key or len(provider_key) > 200 or not provider_key.isprintable():
        raise InvalidRequest("provider_key is required (the node's identity key)", param="provider_key")
    bearer = presented_bearer(request)
    if bearer and bearer.startswith("darkbloom-pt-"):
        account_id = await lookup_provider_token(request.app.state.sessions, bearer)
        if account_id is None:
            raise AuthenticationFailed("invalid or revoked provider token", code="invalid_provider_token")
    else:
        account_id = (await require_session(request)).account_id
    found = await earnings(request.app.state.sessions, account_id, limit, provider_key)
    return {**await _earnings_body(request, account_id, found, limit), "provider_key": provider_key}


def _price_entry(model_id: str, price: Price) -> dict[str, Any]:
    return {"model": model_id, "input_price": price.input_price, "output_price": price.output_price,
            "input_usd": _per_million(price.input_price), "output_usd": _per_million(price.output_price)}


def _per_million(micro: int) -> str:
    """api.md §5: ``"$%.4f"`` of USD per million tokens, rounded half up in integers."""
    tenths_of_cents = (micro + 50) // 100
    return f"${tenths_of_cents // 10_000}.{tenths_of_cents % 10_000:04d}"


@router.get("/v1/pricing")
async def pricing(request: Request) -> dict[str, Any]:
    prices: PriceBook = request.app.state.prices
    settings = request.app.state.settings
    return {"prices": [_price_entry(model.id, price) for model, price in prices.all()],
            "default": {"input_price": 50_000, "output_price": 200_000},
            "minimum_charge_micro_usd": MIN_CHARGE_MICRO_USD,
            "platform_fee_bps": settings.platform_fee_bps}


@router.put("/v1/pricing")
@router.delete("/v1/pricing")
async def provider_pricing(request: Request) -> None:
    """The reference lets a provider set its own prices; here one platform price per model
    stands (billing.md §1 Decision)."""
    raise NotFound("provider-set prices are not supported: one platform price per model; see GET "
                   "/v1/pricing")


class _PriceBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(min_length=1, max_length=256)
    input_price: int = Field(gt=0, le=MAX_PRICE)
    output_price: int = Field(gt=0, le=MAX_PRICE)


@router.put("/v1/admin/pricing")
async def admin_pricing(request: Request, admin: AdminDep) -> dict[str, Any]:
    """Set a model's platform price (micro-USD per million tokens); later reservations use it."""
    raw = parse_json_body(await read_body(request, _BODY_LIMIT))
    try:
        body = _PriceBody.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"invalid {param or 'body'}: input_price and output_price are positive "
                             f"integers of micro-USD per million tokens (at most {MAX_PRICE})",
                             param=param) from None
    state = request.app.state
    model = state.catalog.resolve(body.model)
    if model is None:
        raise ModelNotFound(f"The model {body.model!r} is not in the catalog", param="model")
    price = Price(body.input_price, body.output_price)
    actor = admin.account_id if admin else "admin-key"
    async with state.sessions.begin() as session:
        await state.prices.store(session, model, price, actor)
        await record_action(session, actor=actor, action="set_price", detail={
            "model": model.id, "input_price": price.input_price, "output_price": price.output_price})
    state.prices.remember(model, price)  # this process at once; the others within price_reload_s
    return {"status": "platform_default_updated", **_price_entry(model.id, price)}
