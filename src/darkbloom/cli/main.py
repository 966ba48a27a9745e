"""The `darkbloom` command: parse, call, print."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from darkbloom.cli import provider_flags
from darkbloom.cli.config_cmd import SettingsAwareTyper, config_app
from darkbloom.cli.provider_cmds import register as register_provider_commands
from darkbloom.config import CoordinatorSettings, ProviderSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


app = SettingsAwareTyper(help="darkbloom: private AI inference on machines people already own.",
                         no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Consumer API keys.", no_args_is_help=True)
admin_app = typer.Typer(help="Operator commands (work directly on the coordinator database).",
                        no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(admin_app, name="admin")
identity_app = typer.Typer(help="The provider's identity key and its certificate.",
                           no_args_is_help=True)
app.add_typer(identity_app, name="identity")
app.add_typer(config_app, name="config")
provider_token_app = typer.Typer(help="Provider tokens: mint (no subcommand), list, revoke.")
admin_app.add_typer(provider_token_app, name="provider-token")
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


@app.command()
def coordinator(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000 or DARKBLOOM_PORT).")] = None,
) -> None:
    """Run the coordinator (HTTP API + provider WebSocket hub)."""
    import uvicorn

    from darkbloom.cli import logs
    from darkbloom.coordinator.app import create_app
    from darkbloom.coordinator.catalog_file import CatalogFileError
    from darkbloom.protocol.frames import MAX_FRAME_BYTES

    settings = CoordinatorSettings()
    logs.setup(settings.log_level, settings.log_format)
    try:
        application = create_app(settings)
    except CatalogFileError as exc:
        err_console.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    uvicorn.run(application, host=host or settings.host, port=port or settings.port,
                ws_max_size=MAX_FRAME_BYTES, log_config=None,
                proxy_headers=bool(settings.forwarded_allow_ips),
                forwarded_allow_ips=settings.forwarded_allow_ips or None,
                log_level=logs.uvicorn_level(settings.log_level), timeout_graceful_shutdown=15)


@app.command()
def serve(
    coordinator: provider_flags.Coordinators = None,
    model: provider_flags.Models = None,
    slots: provider_flags.Slots = None,
    threads: provider_flags.Threads = None,
    idle_timeout: provider_flags.IdleTimeout = None,
    engine: provider_flags.Engine = None,
) -> None:
    """Run a provider in the foreground: load the models, dial out to the coordinator, serve until
    Ctrl-C. Settings come from provider.toml (`darkbloom config show`), then the environment, then
    these flags.

    Example: darkbloom serve --coordinator wss://coordinator.example/ws/provider --model smollm2-135m
    """
    from darkbloom.cli import logs
    from darkbloom.cli.provider_common import model_store, provider_settings
    from darkbloom.provider.agent import redact_url
    from darkbloom.provider.runtime import SETUP_ERRORS, disable_core_dumps, model_host, run
    from darkbloom.provider.runtime import serve as run_serve

    disable_core_dumps()
    settings = provider_settings(provider_flags.flags(coordinator, model, slots, threads,
                                                      idle_timeout, engine))
    logs.setup(settings.log_level, settings.log_format)
    console.print("coordinator" + ("s, in failover order: " if len(settings.coordinators) > 1
                                   else ": ") + ", ".join(map(redact_url, settings.coordinators)),
                  markup=False, highlight=False, soft_wrap=True)
    try:
        host = model_host(settings, model_store(settings))
        if not settings.schedule.enabled or settings.schedule.is_open(datetime.now()):
            with console.status(f"Loading {', '.join(settings.models)}..."):
                host.load_all()  # here, to show progress; outside a window, when one opens
    except SETUP_ERRORS as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None
    try:
        run(run_serve(settings, host))
    except Exception as exc:  # FatalRejection and friends: say why, exit non-zero
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@app.command()
def up() -> None:
    """Start a coordinator and a local provider with the default model (what `make run` runs)."""
    from darkbloom.cli.devstack import run_up

    raise typer.Exit(run_up(CoordinatorSettings()))


@app.command()
def verify(
    response: Annotated[Path, typer.Argument(help="Saved response: SSE stream text or JSON body.")],
    attestation: Annotated[Path, typer.Option(help="Saved GET /v1/providers/attestation JSON.")],
    receipt: Annotated[str | None, typer.Option(help="x-darkbloom-receipt header (bodies).")] = None,
    signature: Annotated[str | None, typer.Option(help="x-se-signature header (bodies).")] = None,
    request: Annotated[Path | None, typer.Option(help="The exact request body sent.")] = None,
    root_ca: Annotated[Path | None, typer.Option(help="PEM root CA you pin: check the chain.")] = None,
) -> None:
    """Check a response's receipt offline: attested provider, response bytes, signature."""
    from darkbloom.client.verify import decode_receipt_header, parse_sse, verify_receipt

    text = response.read_bytes()
    try:
        transcript, signed, sig = parse_sse(text.decode("utf-8", "replace"))
    except ValueError as exc:  # a stream holding lines its receipt cannot cover
        console.print(f"[red]✗ {exc}[/red]")
        raise typer.Exit(1) from None
    if signed is None:  # a non-streamed body: the receipt came in headers
        if receipt is None or signature is None:
            console.print("[red]no receipt in the file: pass --receipt and --signature[/red]")
            raise typer.Exit(2)
        signed, sig, transcript = decode_receipt_header(receipt), signature, text
    listing = json.loads(attestation.read_text()).get("providers", [])
    roots = None
    if root_ca is not None:
        from darkbloom.crypto.certificates import load_roots

        roots = load_roots([root_ca])
    steps = verify_receipt(signed, sig or "", transcript, listing,
                           request.read_bytes() if request else None, roots)
    for step in steps:
        mark = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
        console.print(f"{mark} {step.name}" + (f"  ({step.detail})" if step.detail else ""))
    raise typer.Exit(0 if all(step.ok for step in steps) else 1)


@identity_app.command("csr")
def identity_csr() -> None:
    """Print a certificate signing request for this provider's identity key (PEM)."""
    from darkbloom.crypto.signing import IdentityKey
    from darkbloom.provider.attestation import machine_serial

    settings = ProviderSettings()
    identity = IdentityKey.load_or_create(settings.config_dir / "identity.pem")
    print(identity.csr_pem(f"darkbloom provider {identity.key_id}", machine_serial()).decode(), end="")


@identity_app.command("install-cert")
def identity_install_cert(
    chain: Annotated[Path, typer.Argument(help="PEM chain signed by the operator's CA, leaf first.")],
) -> None:
    """Install the certificate chain the provider presents for hardware trust."""
    from cryptography import x509

    from darkbloom.crypto.signing import IdentityKey
    from darkbloom.provider.attestation import CHAIN_FILE

    settings = ProviderSettings()
    identity = IdentityKey.load_or_create(settings.config_dir / "identity.pem")
    certs = x509.load_pem_x509_certificates(chain.read_bytes())
    if not certs or not identity.matches(certs[0].public_key()):
        console.print("[red]the first certificate is not for this provider's identity key[/red]")
        raise typer.Exit(1)
    (settings.config_dir / CHAIN_FILE).write_bytes(chain.read_bytes())
    console.print(f"installed {len(certs)} certificate(s); the next `darkbloom serve` presents them")


@keys_app.command("create")
def keys_create(
    label: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "",
    account: Annotated[str, typer.Option(help="Account id.")] = "local",
    min_trust_level: Annotated[str | None, typer.Option(
        help="Only providers at this level or above serve this key: self_signed or hardware.")] = None,
) -> None:
    """Create an API key for a local account and print it (shown once)."""
    from darkbloom.coordinator.store.credentials import create_api_key

    if min_trust_level not in (None, "none", "self_signed", "hardware"):
        console.print("[red]--min-trust-level must be none, self_signed or hardware[/red]")
        raise typer.Exit(2)
    issued = asyncio.run(_with_sessions(
        lambda s: create_api_key(s, account, label, min_trust_level)))
    print(issued.secret)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (not the key itself).")]) -> None:
    """Revoke an API key; running coordinators stop accepting it within 30 s."""
    from darkbloom.coordinator.store.credentials import revoke_api_key

    if not asyncio.run(_with_sessions(lambda s: revoke_api_key(s, key_id))):
        console.print(f"[red]no active key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@admin_app.command("grant")
def admin_grant(
    email: Annotated[str, typer.Option(help="Email of the account to make an admin.")],
    create: Annotated[bool, typer.Option(help="Create the account if there is none; asks for its "
                                               "password (the only way to create an address in "
                                               "DARKBLOOM_ADMIN_EMAILS).")] = False,
) -> None:
    """Make an account an admin (its sessions can use admin routes), creating it with --create."""
    from darkbloom.coordinator.store.accounts import (
        create_account,
        grant_admin,
        hash_password,
        normalise_email,
        password_problem,
    )

    normalised = normalise_email(email)
    if normalised is None:
        console.print("[red]not a valid email address[/red]")
        raise typer.Exit(1)
    if create:
        password = typer.prompt("password for the new account", hide_input=True,
                                confirmation_prompt=True)
        if problem := password_problem(password):
            console.print(f"[red]{problem}[/red]")
            raise typer.Exit(1)
        hashed = hash_password(password)
        created = asyncio.run(_with_sessions(lambda s: create_account(s, normalised, hashed)))
        console.print("created the account" if created else "the account exists already")
    if not asyncio.run(_with_sessions(lambda s: grant_admin(s, normalised))):
        console.print("[red]no account has that email (add --create)[/red]")
        raise typer.Exit(1)
    console.print("granted admin")


@provider_token_app.callback(invoke_without_command=True)
def provider_token(
    ctx: typer.Context,
    label: Annotated[str, typer.Option(help="A name for the machine.")] = "",
    account: Annotated[str, typer.Option(help="Account the machine earns for.")] = "local",
) -> None:
    """Mint a provider token (darkbloom-pt-...) for an account and print it (shown once); its id,
    for `revoke`, goes to stderr so stdout is only the token."""
    if ctx.invoked_subcommand is not None:
        return
    from darkbloom.coordinator.store.credentials import create_provider_token

    issued = asyncio.run(_with_sessions(lambda s: create_provider_token(s, account, label)))
    err_console.print(f"token id {issued.id} (prefix {issued.prefix})")
    print(issued.secret)


@provider_token_app.command("list")
def provider_token_list() -> None:
    """List provider tokens: id, prefix, account, label, created, revoked."""
    from darkbloom.coordinator.store.credentials import list_provider_tokens

    for row in asyncio.run(_with_sessions(list_provider_tokens)):
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        print(f"{row.id}  {row.prefix}  {row.account_id}  {row.created_at:%Y-%m-%d %H:%M}  "
              f"{revoked}  {row.label}")


@provider_token_app.command("revoke")
def provider_token_revoke(
    ref: Annotated[str, typer.Argument(help="The token's id, or a prefix of the token or its id.")],
) -> None:
    """Revoke a provider token; a running coordinator closes its live sockets within seconds."""
    from darkbloom.coordinator.store.credentials import revoke_provider_token

    ids = asyncio.run(_with_sessions(lambda s: revoke_provider_token(s, ref)))
    if len(ids) != 1:
        console.print(f"{ref} matches {len(ids)} tokens ({', '.join(ids)}); give more of it" if ids
                      else f"no active provider token matches {ref}", style="red", markup=False)
        raise typer.Exit(1)
    console.print(f"revoked {ids[0]}")


@admin_app.command("credit")
def admin_credit(
    account: Annotated[str, typer.Option(help="Account id to credit.")],
    amount: Annotated[str, typer.Option(help='US dollars, e.g. "100.00" (at most 6 decimals).')],
    reference: Annotated[str | None, typer.Option(
        help="Idempotency reference: crediting again with the same one changes nothing.")] = None,
) -> None:
    """Credit an account (non-withdrawable admin_credit, billing.md §10), directly in the database;
    written to the admin action log like a grant over HTTP."""
    import uuid

    from darkbloom.coordinator.api.admin import MAX_GRANT_MICRO_USD
    from darkbloom.coordinator.money import format_usd, parse_usd
    from darkbloom.coordinator.store import ledger
    from darkbloom.coordinator.store.admin_actions import record_action
    from darkbloom.coordinator.store.credentials import ensure_account

    try:
        micro = parse_usd(amount)
    except ValueError as exc:
        console.print(f"[red]--amount {exc}[/red]")
        raise typer.Exit(2) from None
    if not 0 < micro <= MAX_GRANT_MICRO_USD:
        console.print(f"[red]--amount must be more than zero and at most "
                      f"{format_usd(MAX_GRANT_MICRO_USD, 2)}[/red]")
        raise typer.Exit(2)
    ref = reference or f"cli:{uuid.uuid4().hex}"

    async def grant(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions.begin() as session:
            await ensure_account(session, account)
        async with ledger.transaction(sessions) as session:
            await ledger.lock(session, account)
            entry = await ledger.post(session, account, micro, "admin_credit", ref, actor="cli")
            if not entry.replayed:
                await record_action(session, actor="cli", action="admin_credit", target_account_id=account,
                                    amount_micro_usd=micro, reference=ref, detail={"via": "cli"})
        return entry.balance_after_micro_usd

    print(format_usd(asyncio.run(_with_sessions(grant))))


@admin_app.command("audit")
def admin_audit() -> None:
    """Recompute every balance from the ledger and compare with the cached balances (writes nothing);
    exits 1 on any mismatch, listing it."""
    from sqlalchemy.exc import DBAPIError

    from darkbloom.coordinator.money import format_usd
    from darkbloom.coordinator.store.ledger import audit

    try:
        mismatches = asyncio.run(_with_sessions(audit, migrate=False))
    except DBAPIError as exc:
        err_console.print(f"cannot read the ledger ({type(exc.orig).__name__}); has the coordinator "
                          "started on this database?", style="red", markup=False)
        raise typer.Exit(2) from None
    if not mismatches:
        print("ledger and balances agree")
        return
    print(f"{'account':<34}" + "".join(f"{head:>20}" for head in (
        "balance", "ledger balance", "withdrawable", "ledger withdrawable", "bad balance_after")))
    for m in mismatches:
        amounts = (m.balance_micro_usd, m.ledger_balance_micro_usd, m.withdrawable_micro_usd,
                   m.ledger_withdrawable_micro_usd)
        print(f"{m.account_id:<34}" + "".join(f"{format_usd(a):>20}" for a in amounts)
              + f"{m.bad_balance_after:>20}")
    err_console.print(f"{len(mismatches)} account(s) disagree with the ledger", style="red", markup=False)
    raise typer.Exit(1)


async def _with_sessions(
    action: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]], migrate: bool = True,
) -> T:
    from darkbloom.coordinator.store.db import make_engine, make_sessionmaker, upgrade

    settings = CoordinatorSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        await upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        return await action(make_sessionmaker(engine))
    finally:
        await engine.dispose()


# Provider operator commands (provider.md "Commands"), one module each.
from darkbloom.cli import benchmark_cmd, doctor_cmd, models_cmd, status_cmd  # noqa: E402

app.add_typer(models_cmd.app, name="models")
app.command("status")(status_cmd.status)
app.command("doctor")(doctor_cmd.doctor)
app.command("benchmark")(benchmark_cmd.benchmark)
register_provider_commands(app)  # start, stop, logs, login, logout, earnings
