"""`darkbloom status`: is the provider running, on what machine, linked to an account, and
which models it can serve here."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from darkbloom.cli import daemon
from darkbloom.cli.provider_common import (
    account_linked,
    console,
    model_store,
    provider_settings,
)


def _served(pid: int | None, configured: list[str]) -> list[str]:
    """What the running daemon serves: its --model flags, else the configured models."""
    if pid is None:
        return []
    import psutil

    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        argv = []
    flagged = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--model"]
    flagged += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--model=")]
    return flagged or list(configured)


def _core_dumps_disabled(pid: int | None) -> bool | None:
    """The daemon's own limit (it turns core dumps off at start); None when it is not running."""
    if pid is None:
        return None
    import resource

    import psutil

    try:
        soft, hard = psutil.Process(pid).rlimit(resource.RLIMIT_CORE)
    except (psutil.Error, AttributeError, OSError):
        return None
    return bool(soft == 0 and hard == 0)


def snapshot() -> dict[str, Any]:
    from darkbloom.provider.agent import redact_url
    from darkbloom.provider.attestation import posture
    from darkbloom.provider.hardware import detect
    from darkbloom.provider.model_store import fits, memory_budget

    settings = provider_settings()
    pid = daemon.running_pid(settings.config_dir)
    hardware = detect()
    budget = memory_budget()
    installed = model_store(settings).installed()
    return {
        "running": pid is not None,
        "pid": pid,
        "served_models": _served(pid, settings.models),
        "coordinators": [redact_url(url) for url in settings.coordinators],
        "config_dir": str(settings.config_dir),
        "account_linked": account_linked(settings),
        "hardware": {
            "machine": hardware.machine_model, "chip": hardware.chip_name,
            "cpu_cores": hardware.cpu_cores.total,
            "memory_total_gb": hardware.memory_gb, "memory_available_gb": hardware.memory_available_gb,
            "accelerator": hardware.accelerator, "gpu": hardware.gpu_name,
            "gpu_memory_gb": hardware.gpu_memory_gb,
            "memory_bandwidth_gbs": hardware.memory_bandwidth_gbs or None,
        },
        "security": {**posture(), "coreDumpsDisabled": _core_dumps_disabled(pid)},
        "memory_budget_bytes": budget,
        "models": [{"id": m.id, "size_bytes": m.size_bytes, "fits": fits(m.size_bytes, budget),
                    "path": str(m.path)} for m in installed],
    }


def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
           ) -> None:
    """Running or stopped, hardware, security, account, and the models servable here.

    Example: darkbloom status --json
    """
    state = snapshot()
    if as_json:
        print(json.dumps(state, indent=2))
        return
    from rich.markup import escape

    hw = {key: escape(value) if isinstance(value, str) else value
          for key, value in state["hardware"].items()}
    sec = state["security"]
    running = (f"[green]running[/green] (pid {state['pid']}), serving "
               f"{escape(', '.join(state['served_models'])) or 'nothing yet'}" if state["running"]
               else "[yellow]stopped[/yellow] (start it with `darkbloom start`)")
    lines = [
        f"provider     {running}",
        f"coordinator  {escape(', '.join(state['coordinators']))}",
        "account      " + ("[green]linked[/green]" if state["account_linked"]
                           else "[yellow]not linked[/yellow] (`darkbloom login`)"),
        f"machine      {hw['chip']} ({hw['cpu_cores']} cores), {hw['machine']}",
        f"memory       {hw['memory_total_gb']} GB total, {hw['memory_available_gb']} GB available",
        "gpu          " + (f"{hw['gpu']} ({hw['gpu_memory_gb']} GB)" if hw["gpu"] else "none"),
        "bandwidth    " + (f"~{hw['memory_bandwidth_gbs']:.0f} GB/s" if hw["memory_bandwidth_gbs"]
                           else "unknown (`darkbloom benchmark` measures real speed)"),
        "security     core dumps "
        f"{ {True: 'off', False: 'ON', None: 'n/a (not running)'}[sec['coreDumpsDisabled']]}, ptrace scope "
        f"{sec['ptraceScope']}, kernel lockdown {escape(str(sec['kernelLockdown']))}",
    ]
    servable = [m for m in state["models"] if m["fits"]]
    too_big = [m for m in state["models"] if not m["fits"]]
    lines.append("models       " + (escape(", ".join(m["id"] for m in servable)) or
                                    "none (`darkbloom models download`)")
                 + (f"; too large here: {escape(', '.join(m['id'] for m in too_big))}"
                    if too_big else ""))
    for line in lines:
        console.print(line, soft_wrap=True)
