"""The flags every provider command that runs or describes `serve` takes (serve, start,
config show), declared once so their names, help and meaning cannot drift apart."""

from __future__ import annotations

from typing import Annotated, Any

import typer

Coordinators = Annotated[list[str] | None, typer.Option(
    "--coordinator", help="ws(s)://host/ws/provider; repeat (or comma-separate) for several "
                          "coordinators of one network, tried in order on failover.")]
Models = Annotated[list[str] | None, typer.Option(
    "--model", help="Model id to serve; repeat for several (each gets its own slots).")]
Slots = Annotated[int | None, typer.Option(
    help="Concurrent requests per model, decoded together (default: llama.cpp as many as fit "
         "2 GiB of KV cache, up to 8; media models 1).")]
Threads = Annotated[int | None, typer.Option(
    help="CPU threads for each model's engine (default: all cores).")]
IdleTimeout = Annotated[int | None, typer.Option(
    "--idle-timeout", help="Unload a model after this many idle minutes (0: never); the next "
                           "request reloads it.")]
Engine = Annotated[str | None, typer.Option(
    help="llama.cpp, mlx-lm or vllm (default: chosen by the machine and the model's format).")]


_FLAG = {"coordinator_urls": "--coordinator", "models": "--model", "slots": "--slots",
         "threads": "--threads", "idle_timeout_mins": "--idle-timeout", "engine": "--engine"}


def flags(coordinator: list[str] | None = None, model: list[str] | None = None,
          slots: int | None = None, threads: int | None = None, idle_timeout: int | None = None,
          engine: str | None = None) -> dict[str, Any]:
    """The given flags as ProviderSettings fields (flags not given left out: they do not override)."""
    given = dict(zip(_FLAG, (coordinator, model, slots, threads, idle_timeout, engine), strict=True))
    return {name: value for name, value in given.items() if value is not None}


def as_args(given: dict[str, Any]) -> list[str]:
    """``flags()``'s result back as a command line (what `start` hands the daemon's `serve`)."""
    args: list[str] = []
    for field_name, value in given.items():
        for item in value if isinstance(value, list) else [value]:
            args += [_FLAG[field_name], str(item)]
    return args
