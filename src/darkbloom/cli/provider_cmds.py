"""Provider operator commands: `start`, `stop`, `logs`, `login`, `logout`, `earnings`
(provider.md "Commands"). Each failure is one line saying what to do, exit status non-zero."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from darkbloom.config import ProviderSettings

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
START_CHECK_S = 2.0  # how long a fresh daemon must stay up before `start` says it started


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(message, style="red", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings(**overrides: object) -> ProviderSettings:
    """Settings with flag overrides; a bad value is named, never echoed (it may be a secret)."""
    from pydantic import ValidationError

    try:
        return ProviderSettings(**{k: v for k, v in overrides.items() if v})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}", 2)


CoordinatorOpt = Annotated[list[str] | None, typer.Option(
    "--coordinator", help="ws(s)://host/ws/provider; repeat (or comma-separate) for several "
                          "coordinators of one network, tried in order on failover")]
ModelOpt = Annotated[list[str] | None, typer.Option(
    help="Model id to serve (repeat for several). Without it, `start` offers a picker.")]
SlotsOpt = Annotated[int | None, typer.Option(help="Concurrent requests (one context each).")]


def _serve_args(coordinator_url: list[str] | None, model: list[str] | None,
                slots: int | None) -> list[str]:
    args = [arg for url in coordinator_url or () for arg in ("--coordinator", url)]
    args += [arg for m in model or () for arg in ("--model", m)]
    return args + (["--slots", str(slots)] if slots else [])


def _pick_models(settings: ProviderSettings) -> list[str] | None:
    """The models engineer's interactive picker where there is a terminal to ask in; None (serve
    what the configuration says) without one, or before that module exists."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    import importlib

    try:  # by name: the module is another engineer's, and may not exist yet
        pick_model = importlib.import_module("darkbloom.cli.models_cmd").pick_model
    except (ImportError, AttributeError):
        return None
    picked = pick_model(settings)
    if not picked:
        _fail("no model picked: nothing started (or pass --model)")
    return [picked] if isinstance(picked, str) else list(picked)


def start(coordinator_url: CoordinatorOpt = None, model: ModelOpt = None, slots: SlotsOpt = None) -> None:
    """Run the provider in the background (stops a running one first).

    Logs go to provider.log in the config dir. Where a systemd user manager runs, the provider is
    the user unit darkbloom-provider.service (restarted on failure, started at login).

    Example: darkbloom start --model smollm2-135m
    """
    from darkbloom.cli import daemon

    settings = _settings(coordinator_urls=coordinator_url, models=model, slots=slots)
    models = list(model) if model else _pick_models(settings)
    args = _serve_args(coordinator_url, models, slots)
    shown_models = ", ".join(models or settings.models)
    config_dir, log = settings.config_dir, daemon.log_path(settings.config_dir)
    try:
        with daemon.control_lock(config_dir):
            _stop(settings, announce_nothing=False)
            _start_locked(config_dir, args, shown_models)
    except OSError as exc:
        _fail(f"could not start the provider in {config_dir}: {exc.strerror or exc}")
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
        except (RuntimeError, OSError) as exc:
            _fail(f"could not start the systemd user unit: {exc}")
        time.sleep(START_CHECK_S)
        if daemon.unit_state() != "active":  # a unit that died is "activating" (restart pending)
            err_console.print(f"the provider stopped at once; the end of {log}:", style="red")
            show_log_tail()
            _fail(f"see `journalctl --user -u {daemon.UNIT_NAME}` and `darkbloom logs`")
        console.print(f"[green]✓[/green] provider started as the systemd user unit "
                      f"{daemon.UNIT_NAME} (models: {shown_models})")
    else:
        proc = daemon.spawn_detached(config_dir, args)
        if not daemon.survives(proc, START_CHECK_S):
            daemon.pidfile_path(config_dir).unlink(missing_ok=True)
            err_console.print(f"the provider exited at once (status {proc.returncode}); the end of "
                              f"{log}:", style="red", markup=False)
            show_log_tail()
            _fail("fix what the log says, then run `darkbloom start` again")
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
        _fail("the running provider belongs to another user: stop it as that user")
    except OSError as exc:
        _fail(f"could not stop the provider ({settings.config_dir}): {exc.strerror or exc}")
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

    settings = _settings()
    try:
        with daemon.control_lock(settings.config_dir):
            _stop(settings)
    except OSError as exc:
        _fail(f"could not stop the provider ({settings.config_dir}): {exc.strerror or exc}")


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

    path = daemon.log_path(_settings().config_dir)
    try:
        shown = tail_lines(path, lines)
    except FileNotFoundError:
        _fail(f"no provider log at {path}: start the provider with `darkbloom start`")
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    for line in shown:
        print(line)
    if follow:
        try:
            for line in follow_log(path):
                print(line, flush=True)
        except KeyboardInterrupt:
            pass


def _coordinator_base(settings: ProviderSettings, coordinator: str | None) -> str:
    from darkbloom.cli.device_login import LoginError, http_base

    try:
        return http_base(coordinator or settings.coordinators[0])
    except LoginError as exc:
        _fail(str(exc), 2)


def _store_token(settings: ProviderSettings, token: str) -> None:
    """The one place `login` stores the token (to become config's save_token at merge)."""
    from darkbloom.cli.device_login import store_token

    store_token(settings.config_dir, token)


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

    settings = _settings()
    base = _coordinator_base(settings, coordinator)
    try:
        with httpx.Client(follow_redirects=False) as client:
            code = request_code(client, base)
            body = Text.assemble(
                ("Open  ", "bold"), (code.verification_uri, "bold cyan underline"),
                ("\nand enter the code\n\n", "bold"), (f"  {code.user_code}  ", "bold black on yellow"),
                (f"\n\nThe code expires in {_duration(code.expires_in)}.", "dim"))
            console.print(Panel(body, title="Link this machine to your darkbloom account",
                                expand=False, padding=(1, 4)))
            with console.status("Waiting for the code to be approved... (Ctrl-C to cancel)"):
                linked = poll_token(client, base, code)
        _store_token(settings, linked.token)
    except LoginError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("login cancelled: nothing was stored", 130)
    except OSError as exc:
        _fail(f"could not store the token in {settings.config_dir}: {exc.strerror}")
    console.print(f"[green]✓[/green] linked to account [bold]{linked.account_id}[/bold]; this "
                  "machine's earnings go there.", soft_wrap=True)
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
    from darkbloom.cli.device_login import forget_token

    settings = _settings()
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
    return "".join(ch for ch in text[:width] if ch.isprintable())


def _fetch_earnings(settings: ProviderSettings, base: str, limit: int) -> dict[str, Any]:
    import httpx

    from darkbloom.cli.device_login import LoginError, call, stored_token

    token = (settings.token.get_secret_value() if settings.token else None) or \
        stored_token(settings.config_dir)
    if not token:
        _fail("not logged in: run `darkbloom login` to link this machine to your account")
    try:
        with httpx.Client(follow_redirects=False) as client:
            answer = call(client, "GET", f"{base}/v1/provider/account-earnings?limit={limit}",
                          token=token)
    except LoginError as exc:
        _fail(str(exc))
    if answer.status == 401:
        _fail("the coordinator refused this machine's provider token (revoked?): run "
              "`darkbloom login` again")
    if answer.status != 200:
        error = answer.body.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        _fail(f"the coordinator could not report earnings: {_cell(message, 200) or answer.status}")
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

    settings = _settings()
    body = _fetch_earnings(settings, _coordinator_base(settings, coordinator), limit)
    if as_json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return
    console.print(f"[bold]Balance[/bold]       {_usd(body.get('available_balance_micro_usd'))}"
                  f"   (withdrawable {_usd(body.get('withdrawable_balance_micro_usd'))})")
    console.print(f"[bold]Total earned[/bold]  {_usd(body.get('total_micro_usd'))}")
    console.print(f"[bold]Jobs[/bold]          {_micro(body.get('count')) or 0}")
    rows = [r for r in body.get("earnings") or [] if isinstance(r, dict)][:limit]
    if rows:
        table = Table(title="Recent earnings", title_justify="left")
        for head, justify in (("when", "left"), ("model", "left"), ("tokens in/out", "right"),
                              ("amount", "right")):
            table.add_column(head, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(_cell(row.get("created_at"), 20), _cell(row.get("model")),
                          f"{_micro(row.get('prompt_tokens')) or 0}/"
                          f"{_micro(row.get('completion_tokens')) or 0}",
                          _usd(row.get("amount_micro_usd")))
        console.print(table)
    else:
        console.print("No earnings yet: keep the provider running (`darkbloom start`).")
    payouts = [p for p in body.get("payouts") or [] if isinstance(p, dict)][:limit]
    if payouts:
        table = Table(title="Payouts", title_justify="left")
        for head in ("when", "amount", "status", "method"):
            table.add_column(head, justify="right" if head == "amount" else "left")
        for payout in payouts:
            amount = payout.get("net_micro_usd", payout.get("amount_micro_usd"))
            table.add_row(_cell(payout.get("created_at"), 20), _usd(amount),
                          _cell(payout.get("status")), _cell(payout.get("method")))
        console.print(table)
    else:
        console.print("No payouts yet.")


COMMANDS: tuple[Callable[..., None], ...] = (start, stop, logs, login, logout, earnings)


def register(app: typer.Typer) -> None:
    """Add these commands to the `darkbloom` app (called once by cli/main.py)."""
    for command in COMMANDS:
        app.command()(command)
