"""`darkbloom models list|download|remove`: the coordinator's catalog against this machine."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from darkbloom.cli import provider_flags
from darkbloom.cli.interruptible import Interruptible
from darkbloom.cli.provider_common import (
    console,
    err_console,
    fail,
    fetch_catalog,
    http_base,
    model_store,
    printable,
    provider_settings,
)

if TYPE_CHECKING:
    from darkbloom.provider.engines.base import LocalModel

app = typer.Typer(
    help="Models on this machine and in the network's catalog: list (the default), download, "
         "remove.\n\nExample: darkbloom models download --model smollm2-135m",
    invoke_without_command=True)

CoordinatorOption = Annotated[list[str] | None, typer.Option(
    "--coordinator", help="ws(s)://host/ws/provider of the coordinator whose catalog to use "
                          "(default: the configured one).")]
ModelOption = Annotated[str | None, typer.Option("--model", help="Model id or alias.")]


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    display_name: str
    size_bytes: int
    quantization: str
    status: str  # downloaded | available | too large
    fits: bool
    downloadable: bool  # the catalog gives a download URL
    in_catalog: bool | None  # None: the catalog could not be read
    path: str | None = None  # where the weights are, once downloaded
    weight_hash: str | None = None
    hash_matches_catalog: bool | None = None  # None: not downloaded, or not in the catalog


def rows(catalog: list[dict[str, Any]] | None, installed: list[LocalModel], budget: int) -> list[Row]:
    """Each catalog model marked downloaded / available (fits) / too large, then the models on
    disk the catalog does not know (served only where the coordinator accepts them). ``None``:
    the catalog could not be read, so only what is here is listed."""
    from darkbloom.provider.model_store import fits

    local = {name: model for model in installed for name in model.names()}
    out: list[Row] = []
    seen: set[str] = set()
    for entry in catalog or []:
        size = entry.get("size_bytes")
        size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
        model = local.get(entry["id"])
        fit = fits(model.size_bytes if model else size, budget)
        sha = entry.get("sha256") or entry.get("weight_hash")
        out.append(Row(
            id=entry["id"], display_name=str(entry.get("display_name") or "")[:120], size_bytes=size,
            quantization=str(entry.get("quantization") or "")[:32],
            status="downloaded" if model else "available" if fit else "too large", fits=fit,
            downloadable=bool(entry.get("download_url")), in_catalog=True,
            path=str(model.path) if model else None, weight_hash=model.weight_hash if model else None,
            hash_matches_catalog=(model.weight_hash == sha) if model else None))
        if model:
            seen.add(model.id)
    for model in installed:
        if model.id not in seen:
            out.append(Row(id=model.id, display_name="", size_bytes=model.size_bytes,
                           quantization=model.quantization, status="downloaded",
                           fits=fits(model.size_bytes, budget), downloadable=False,
                           in_catalog=False if catalog is not None else None,
                           path=str(model.path), weight_hash=model.weight_hash))
    return out


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size else "?"


@app.callback()
def models(ctx: typer.Context, coordinator: CoordinatorOption = None,
           as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
           ) -> None:
    """Models on this machine and in the network's catalog (no subcommand: list)."""
    if ctx.invoked_subcommand is None:
        list_models(coordinator, as_json)


@app.command("list")
def list_models(
    coordinator: CoordinatorOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The catalog, each model marked downloaded / available (fits) / too large.

    Available: it fits in memory (file size x 1.2 against RAM - 4 GB, or GPU memory).

    Without the coordinator, lists the models on this machine.

    Example: darkbloom models list --json
    """
    from darkbloom.provider.agent import redact_url
    from darkbloom.provider.model_store import memory_budget

    settings = provider_settings(provider_flags.flags(coordinator))
    where = redact_url(settings.coordinators[0])
    catalog: list[dict[str, Any]] | None
    try:
        with Interruptible() as waiting:  # Ctrl-C as in `login` (cli/interruptible.py)
            catalog = waiting.run(lambda: fetch_catalog(settings))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:
        catalog = None
        err_console.print(f"note: coordinator {where} unreachable ({exc}); showing the models on "
                          "this machine only", style="yellow", markup=False, soft_wrap=True)
    budget = memory_budget()
    table_rows = rows(catalog, model_store(settings).installed(), budget)
    if as_json:
        print(json.dumps({"coordinator": http_base(where), "reachable": catalog is not None,
                          "memory_budget_bytes": budget,
                          "models": [asdict(row) for row in table_rows]}, indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False, pad_edge=False)
    for column in ("model", "size", "quant", "status", ""):
        table.add_column(column, justify="right" if column == "size" else "left")
    for row in table_rows:
        style = {"downloaded": "green", "available": "", "too large": "dim"}[row.status]
        note = ("not in the catalog" if row.in_catalog is False
                else "weights differ from the catalog's" if row.hash_matches_catalog is False
                else "" if row.downloadable or row.status == "downloaded" else "no download URL")
        # The catalog's text is shown without its control characters (an escape sequence from
        # the coordinator must not reach the terminal); --json keeps it, escaped by JSON.
        table.add_row(*(Text(printable(cell)) for cell in (row.id, _gb(row.size_bytes),
                                                            row.quantization, row.status, note)),
                      style=style)
    console.print(table)
    console.print(f"memory for models here: {budget / 1e9:.1f} GB (a model needs its size x 1.2)",
                  style="dim")


@app.command("download")
def download(
    model: ModelOption = None,
    coordinator: CoordinatorOption = None,
    force: Annotated[bool, typer.Option(help="Download even if it does not fit in memory.")] = False,
) -> None:
    """Download a model from the catalog: resumable, checked against its SHA-256.

    Without --model, in a terminal: pick from the models that fit and are not here yet.

    An interrupted download continues where it stopped when run again.

    Example: darkbloom models download --model smollm2-135m
    """
    from rich.markup import escape

    from darkbloom.provider.agent import redact_url
    from darkbloom.provider.model_store import DownloadSpec, StoreError, fits, memory_budget

    settings = provider_settings(provider_flags.flags(coordinator))
    try:
        with Interruptible() as waiting:  # Ctrl-C as in `login` (cli/interruptible.py)
            catalog = waiting.run(lambda: fetch_catalog(settings))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:
        fail(f"cannot read the catalog from {redact_url(settings.coordinators[0])} ({exc}); "
             "check that the coordinator runs, or pass --coordinator")
    store = model_store(settings)
    budget = memory_budget()
    if model is None:
        model = _pick(rows(catalog, store.installed(), budget))
    entry = next((e for e in catalog if model == e["id"]), None) or \
        next((e for e in catalog if model in _aliases(e)), None)
    if entry is None:
        fail(f"no model {model!r} in the coordinator's catalog (see `darkbloom models list`)")
    present = store.find(entry["id"])
    if present is not None and present.weight_hash == (entry.get("sha256") or entry.get("weight_hash")):
        console.print(f"{entry['id']} is already downloaded ({present.path})", markup=False)
        return
    try:
        spec = DownloadSpec.from_catalog(entry)
    except StoreError as exc:
        fail(str(exc))
    if not force and not fits(spec.size_bytes, budget):
        fail(f"{spec.id} needs about {spec.size_bytes * 1.2 / 1e9:.1f} GB of memory and this machine "
             f"offers {budget / 1e9:.1f} GB; pass --force to download it anyway")
    resumed = store.partial_bytes(spec)
    if resumed:
        console.print(f"resuming {spec.id} at {resumed / 1e9:.2f} of {spec.size_bytes / 1e9:.2f} GB",
                      markup=False)
    try:
        # Never raised inside the progress bar's lock.
        with Interruptible() as waiting, _progress() as progress:
            task: list[Any] = []

            def report(done: int, total: int) -> None:
                if not task:
                    task.append(progress.add_task(spec.id, total=total, completed=done))
                progress.update(task[0], completed=done)

            local = waiting.run(lambda: store.download(spec, report))
    except StoreError as exc:
        fail(str(exc))
    except OSError as exc:  # the disk filled up, the directory is read-only...
        fail(f"cannot write {spec.filename} in {store.models_dir}: {exc.strerror}; fix that and run "
             "the same command again to resume")
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume the download", 130)
    console.print(f"[green]✓[/green] {escape(local.id)} downloaded to {escape(str(local.path))} "
                  "(SHA-256 verified)")


def _aliases(entry: dict[str, Any]) -> list[str]:
    """A catalog entry's aliases when they are a list of strings (else none: a string would match
    its substrings, a number would not compare)."""
    aliases = entry.get("aliases")
    return [a for a in aliases if isinstance(a, str)] if isinstance(aliases, list) else []


def _progress() -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console)


def _pick(table_rows: list[Row]) -> str:
    from darkbloom.cli.picker import Choice, pick_model
    from darkbloom.inference.catalog import MODEL_ID

    if not sys.stdin.isatty():
        fail("pass --model ID (see `darkbloom models list`)", 2)
    offer = [Choice(row.id, printable(row.display_name), row.size_bytes) for row in table_rows
             if row.status == "available" and row.downloadable and MODEL_ID.fullmatch(row.id)]
    if not offer:
        fail("nothing to download: every model that fits here is downloaded already "
             "(see `darkbloom models list`)")
    try:
        return pick_model(offer, title="Models that fit in this machine's memory",
                          console=console)[0]
    except typer.Abort:
        fail("cancelled", 130)


@app.command("remove")
def remove(model: Annotated[str, typer.Option("--model", help="Model id or alias.")]) -> None:
    """Delete a downloaded model (or a partial download) from this machine.

    Example: darkbloom models remove --model tiny-1b
    """
    from darkbloom.provider.model_store import StoreError

    settings = provider_settings()
    try:
        deleted = model_store(settings).remove(model)
    except StoreError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot delete {model}: {exc.strerror}")
    weights = next((p for p in deleted if p.name.endswith((".gguf", ".gguf.part"))), deleted[0])
    console.print(f"removed {model} ({weights})", markup=False)
