"""The interactive model picker (`models download` without --model; `start` without --model).

A numbered list and a number to type: it works in any terminal, over SSH and in tmux, with no
key-handling library. Callers decide what to offer (models that fit, not yet downloaded...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import typer
from rich import filesize
from rich.console import Console
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True, slots=True)
class Choice:
    id: str
    label: str = ""  # e.g. the display name
    size_bytes: int = 0
    note: str = ""  # e.g. "downloaded", "needs 2.1 GB"


def pick_model(choices: Sequence[Choice], *, title: str, console: Console,
               allow_many: bool = False) -> list[str]:
    """Show the choices numbered and read the operator's pick: one number, or with
    ``allow_many`` several (``1 3``, ``1,3``); an empty answer picks the first. Returns the
    chosen ids (empty when there was nothing to choose). Ctrl-C / Ctrl-D raise typer.Abort."""
    if not choices:
        return []
    console.print(title, style="bold", markup=False)
    table = Table(show_edge=False, pad_edge=False)
    for column in ("#", "model", "size", ""):
        table.add_column(column, justify="right" if column in ("#", "size") else "left")
    for number, choice in enumerate(choices, start=1):
        size = filesize.decimal(choice.size_bytes) if choice.size_bytes else ""
        name = Text(choice.id)
        if choice.label and choice.label != choice.id:
            name.append(f"  {choice.label}", style="dim")
        table.add_row(str(number), name, size, Text(choice.note))
    console.print(table)
    hint = "numbers, e.g. 1 3" if allow_many else "a number"
    while True:
        answer = typer.prompt(f"Pick {hint} [1-{len(choices)}]", default="1", show_default=True)
        picked = _parse(answer, len(choices), allow_many)
        if picked is not None:
            return [choices[i - 1].id for i in picked]
        console.print(f"[red]type {hint} between 1 and {len(choices)}[/red]")


def _parse(answer: str, count: int, allow_many: bool) -> list[int] | None:
    parts = answer.replace(",", " ").split()
    if not parts or (len(parts) > 1 and not allow_many) or len(parts) > count:
        return None
    if not all(part.isdigit() and 1 <= int(part) <= count for part in parts):
        return None
    return list(dict.fromkeys(int(part) for part in parts))
