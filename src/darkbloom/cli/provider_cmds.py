"""Provider operator commands: `start`, `stop`, `logs`, `login`, `logout`, `earnings`
(provider.md "Commands"). Each failure is one line saying what to do, exit status non-zero."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from darkbloom.cli import provider_flags
from darkbloom.cli.provider_common import (
    console,
    err_console,
    fail,
    http_base,
    model_store,
    printable,
    provider_settings,
)
from darkbloom.config import ProviderSettings

START_CHECK_S = 2.0  # how long a fresh daemon must stay up before `start` says it started


def _pick_models(settings: ProviderSettings) -> list[str] | None:
    """In a terminal, the installed models that fit in memory to choose from; None (serve what
    the configuration says) without a terminal to ask in."""
    from darkbloom.cli.picker import Choice, pick_model
    from darkbloom.provider.model_store import fits

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    offer = [Choice(m.id, m.id, m.size_bytes) for m in model_store(settings).installed()
             if fits(m.size_bytes)]
    if not offer:
        fail("no installed model fits in this machine's memory: see `darkbloom models list`")
    try:
        return pick_model(offer, title="Models to serve (they fit in this machine's memory)",
                          console=console, allow_many=True)
    except typer.Abort:
        fail("cancelled: nothing started", 130)


def start(
    coordinator: provider_flags.Coordinators = None,
    model: provider_flags.Models = None,
    slots: provider_flags.Slots = None,
    threads: provider_flags.Threads = None,
    idle_timeout: provider_flags.IdleTimeout = None,
    engine: provider_flags.Engine = None,
) -> None:
    """Run the provider in the background (stops a running one first).

    Logs go to provider.log in the config dir. Where a systemd user manager runs, the provider is
    the user unit darkbloom-provider.service (restarted on failure, started at login).

    Example: darkbloom start --model smollm2-135m
    """
    from darkbloom.cli import daemon

    flags = provider_flags.flags(coordinator, model, slots, threads, idle_timeout, engine)
    settings = provider_settings(flags)
    if not model and (picked := _pick_models(settings)):
        flags["models"] = picked
    args = provider_flags.as_args(flags)
    shown_models = ", ".join(flags.get("models") or settings.models)
    config_dir, log = settings.config_dir, daemon.log_path(settings.config_dir)
    try:
        with daemon.control_lock(config_dir):
            _stop(settings, announce_nothing=False)
            _start_locked(config_dir, args, shown_models)
    except OSError as exc:
        fail(f"could not start the provider in {config_dir}: {exc.strerror or exc}")
    console.print(f"log: {log}   follow it: darkbloom logs -f   stop it: darkbloom stop",
                  markup=False, soft_wrap=True)


def _start_locked(config_dir: Path, args: list[str], shown_models: str) -> None:
    import time

    from darkbloom.cli import daemon
    from darkbloom.cli.logtail import tail_lines

    log = daemon.log_path(config_dir)

    def show_log_tail() -> None:
        try:
            lines = daemon.since_last_start(tail_lines(log, 15))
        except OSError:
            lines = []
        for line in lines:
            err_console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)

    if daemon.systemd_user_available():
        try:
            daemon.install_unit(config_dir, args)
        except (RuntimeError, OSError, daemon.UnitError) as exc:
            fail(f"could not start the systemd user unit: {exc}")
        time.sleep(START_CHECK_S)
        if daemon.unit_state() != "active":  # a unit that died is "activating" (restart pending)
            err_console.print(f"the provider stopped at once; the end of {log}:", style="red")
            show_log_tail()
            fail(f"see `journalctl --user -u {daemon.UNIT_NAME}` and `darkbloom logs`")
        console.print(f"[green]✓[/green] provider started as the systemd user unit "
                      f"{daemon.UNIT_NAME} (models: {shown_models})")
    else:
        proc = daemon.spawn_detached(config_dir, args)
        if not daemon.survives(proc, START_CHECK_S):
            daemon.pidfile_path(config_dir).unlink(missing_ok=True)
            err_console.print(f"the provider exited at once (status {proc.returncode}); the end of "
                              f"{log}:", style="red", markup=False)
            show_log_tail()
            fail("fix what the log says, then run `darkbloom start` again")
        console.print(f"[green]✓[/green] provider started in the background, pid {proc.pid} "
                      f"(models: {shown_models})", soft_wrap=True)


def _stop(settings: ProviderSettings, announce_nothing: bool = True) -> bool:
    """Stop the unit and/or the pidfile daemon; whether anything was running."""
    from darkbloom.cli import daemon

    stopped = False
    if daemon.systemd_user_available() and daemon.stop_unit():
        console.print(f"stopped the systemd user unit {daemon.UNIT_NAME}")
        stopped = True
    try:
        result = daemon.stop_pidfile_daemon(settings.config_dir)
    except PermissionError:
        fail("the running provider belongs to another user: stop it as that user")
    except OSError as exc:
        fail(f"could not stop the provider ({settings.config_dir}): {exc.strerror or exc}")
    if result.pid is not None:
        how = "killed after 10 s without exiting on SIGTERM" if result.killed else "stopped"
        console.print(f"{how}: provider pid {result.pid}")
        stopped = True
    elif result.stale:
        console.print("removed a stale pidfile (its process was gone or not a darkbloom provider)")
    if not stopped and announce_nothing:
        console.print("no provider is running")
    return stopped


def stop() -> None:
    """Stop the background provider.

    SIGTERM, up to 10 s to finish, then SIGKILL; the pidfile is removed.

    Example: darkbloom stop
    """
    from darkbloom.cli import daemon

    settings = provider_settings()
    try:
        with daemon.control_lock(settings.config_dir):
            _stop(settings)
    except OSError as exc:
        fail(f"could not stop the provider ({settings.config_dir}): {exc.strerror or exc}")


def logs(
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, max=10_000,
                                       help="How many of the last lines to show.")] = 50,
    follow: Annotated[bool, typer.Option("-f", "--follow",
                                         help="Keep printing new lines until Ctrl-C.")] = False,
) -> None:
    """Show the end of the background provider's log.

    The log is provider.log in the config dir, rotated at 10 MB (3 old files kept).

    Example: darkbloom logs -n 100 -f
    """
    from darkbloom.cli import daemon
    from darkbloom.cli.logtail import follow as follow_log
    from darkbloom.cli.logtail import tail_lines

    path = daemon.log_path(provider_settings().config_dir)
    try:
        shown = tail_lines(path, lines)
    except FileNotFoundError:
        fail(f"no provider log at {path}: start the provider with `darkbloom start`")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    for line in shown:
        print(line)
    if follow:
        try:
            for line in follow_log(path):
                print(line, flush=True)
        except KeyboardInterrupt:
            pass


def _coordinator_base(settings: ProviderSettings, coordinator: str | None) -> str:
    try:
        return http_base(coordinator or settings.coordinators[0])
    except ValueError as exc:
        fail(str(exc), 2)


def login(
    coordinator: Annotated[str | None, typer.Option(
        help="The coordinator: its ws(s)://host/ws/provider URL or its http(s):// address "
             "(default: the configured one).")] = None,
) -> None:
    """Link this machine to your account (device code).

    Shows a code to enter at the coordinator's /link page while signed in, waits for it, and
    stores the provider token (mode 0600) in the config dir.

    Example: darkbloom login --coordinator wss://coordinator.example.com/ws/provider
    """
    import httpx
    from rich.panel import Panel
    from rich.text import Text

    from darkbloom.cli.device_login import LoginError, poll_token, request_code
    from darkbloom.cli.interruptible import Interruptible
    from darkbloom.provider.config_files import save_token

    settings = provider_settings()
    base = _coordinator_base(settings, coordinator)
    # Not `with httpx.Client`: after a Ctrl-C its close would wait on a request still in flight
    # in the abandoned thread (the process ends at once instead).
    client = httpx.Client(follow_redirects=False)
    try:
        with Interruptible() as waiting:
            code = waiting.run(lambda: request_code(client, base))
            body = Text.assemble(
                ("Open  ", "bold"), (code.verification_uri, "bold cyan underline"),
                ("\nand enter the code\n\n", "bold"), (f"  {code.user_code}  ", "bold black on yellow"),
                (f"\n\nThe code expires in {_duration(code.expires_in)}.", "dim"))
            console.print(Panel(body, title="Link this machine to your darkbloom account",
                                expand=False, padding=(1, 4)))
            with console.status("Waiting for the code to be approved... (Ctrl-C to cancel)"):
                linked = waiting.run(lambda: poll_token(client, base, code))
        client.close()
        save_token(settings.config_dir, linked.token)  # a Ctrl-C after approval keeps the token
    except LoginError as exc:
        client.close()
        fail(str(exc))
    except KeyboardInterrupt:
        fail("login cancelled: nothing was stored", 130)
    except OSError as exc:
        fail(f"could not store the token in {settings.config_dir}: {exc.strerror}")
    # The account id is the coordinator's text: shown as text, never read as Rich markup.
    console.print(Text.assemble(("✓", "green"), " linked to account ", (linked.account_id, "bold"),
                                "; this machine's earnings go there."), soft_wrap=True)
    console.print(f"token stored in {settings.config_dir / 'token'} (mode 0600)", markup=False,
                  soft_wrap=True)
    from darkbloom.cli.daemon import running_pid

    if running_pid(settings.config_dir) is not None:
        console.print("The running provider still uses its old credentials: `darkbloom start` "
                      "restarts it.")


def _duration(seconds: int) -> str:
    minutes, rest = divmod(seconds, 60)
    return " ".join(part for part in (f"{minutes} min" if minutes else "",
                                      f"{rest} s" if rest else "") if part) or "0 s"


def logout() -> None:
    """Forget this machine's provider token.

    The account keeps what it earned; revoke the token in the console to retire it for good.

    Example: darkbloom logout
    """
    from darkbloom.provider.config_files import forget_token

    settings = provider_settings()
    if forget_token(settings.config_dir):
        console.print("logged out: the provider token is removed from this machine (revoke it for "
                      "good in the console, under linked machines)")
    else:
        console.print("not logged in: there was no provider token on this machine")


def _micro(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usd(value: object) -> str:
    from darkbloom.coordinator.money import format_usd

    micro = _micro(value)
    return f"${format_usd(micro)}" if micro is not None else "-"


def _cell(value: object, width: int = 40) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return printable(text, width)


def _dicts(value: object, limit: int) -> list[dict[str, Any]]:
    """The dicts of a list the coordinator sent ([] when it sent something else)."""
    return [item for item in value if isinstance(item, dict)][:limit] if isinstance(value, list) else []


def _fetch_earnings(settings: ProviderSettings, base: str, limit: int) -> dict[str, Any]:
    import httpx

    from darkbloom.cli.device_login import Answer, LoginError, call
    from darkbloom.cli.interruptible import Interruptible

    token = settings.token.get_secret_value() if settings.token else None
    if not token:
        fail("not logged in: run `darkbloom login` to link this machine to your account")

    def fetch() -> Answer:
        with httpx.Client(follow_redirects=False) as client:
            return call(client, "GET", f"{base}/v1/provider/account-earnings?limit={limit}",
                        token=token)

    try:
        with Interruptible() as waiting:  # Ctrl-C as in `login`
            answer = waiting.run(fetch)
    except LoginError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    if answer.status == 401:
        fail("the coordinator refused this machine's provider token (revoked?): run "
              "`darkbloom login` again")
    if answer.status != 200:
        error = answer.body.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        fail(f"the coordinator could not report earnings: {_cell(message, 200) or answer.status}")
    if not answer.body:  # not JSON, not an object, or nested past parsing
        fail(f"{base} did not answer with an earnings report: is it a darkbloom coordinator "
             "(--coordinator)?")
    return answer.body


def earnings(
    coordinator: Annotated[str | None, typer.Option(
        help="The coordinator (default: the configured one).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many recent earnings to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="The coordinator's answer as JSON.")] = False,
) -> None:
    """What this machine's account has earned.

    Balance, total earned, jobs, recent earnings and payouts, with the stored provider token.

    Example: darkbloom earnings --json
    """
    from rich.table import Table
    from rich.text import Text

    settings = provider_settings()
    body = _fetch_earnings(settings, _coordinator_base(settings, coordinator), limit)
    if as_json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return
    console.print(f"[bold]Balance[/bold]       {_usd(body.get('available_balance_micro_usd'))}"
                  f"   (withdrawable {_usd(body.get('withdrawable_balance_micro_usd'))})")
    console.print(f"[bold]Total earned[/bold]  {_usd(body.get('total_micro_usd'))}")
    console.print(f"[bold]Jobs[/bold]          {_micro(body.get('count')) or 0}")
    rows = _dicts(body.get("earnings"), limit)
    if rows:
        table = Table(title="Recent earnings", title_justify="left")
        for head, justify in (("when", "left"), ("model", "left"), ("tokens in/out", "right"),
                              ("amount", "right")):
            table.add_column(head, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            # Cells are Text: a model name like "[/x]" is the coordinator's text, not markup.
            table.add_row(Text(_cell(row.get("created_at"), 20)), Text(_cell(row.get("model"))),
                          f"{_micro(row.get('prompt_tokens')) or 0}/"
                          f"{_micro(row.get('completion_tokens')) or 0}",
                          _usd(row.get("amount_micro_usd")))
        console.print(table)
    else:
        console.print("No earnings yet: keep the provider running (`darkbloom start`).")
    payouts = _dicts(body.get("payouts"), limit)
    if payouts:
        table = Table(title="Payouts", title_justify="left")
        for head in ("when", "amount", "status", "method"):
            table.add_column(head, justify="right" if head == "amount" else "left")
        for payout in payouts:
            amount = payout.get("net_micro_usd", payout.get("amount_micro_usd"))
            table.add_row(Text(_cell(payout.get("created_at"), 20)), _usd(amount),
                          Text(_cell(payout.get("status"))), Text(_cell(payout.get("method"))))
        console.print(table)
    else:
        console.print("No payouts yet.")


COMMANDS: tuple[Callable[..., None], ...] = (start, stop, logs, login, logout, earnings)


def register(app: typer.Typer) -> None:
    """Add these commands to the `darkbloom` app (called once by cli/main.py)."""
    for command in COMMANDS:
        app.command()(command)
