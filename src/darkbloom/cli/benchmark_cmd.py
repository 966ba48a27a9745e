"""`darkbloom benchmark`: measure decode and prefill speed here; `serve` reports them."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from darkbloom.cli.provider_common import console, err_console, fail, provider_settings


def benchmark(
    model: Annotated[str | None, typer.Option(
        "--model", help="Model id (default: the first configured model).")] = None,
    max_tokens: Annotated[int, typer.Option(
        min=2, max=4096, help="Tokens generated per run.")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Measure decode tok/s, time to first token and prefill tok/s of a model here.

    Loads the model, warms up, then times 3 runs of a fixed prompt.

    The medians go to <config dir>/benchmark.json; `serve` reports them, routing uses them.

    Example: darkbloom benchmark --model smollm2-135m --max-tokens 64
    """
    import asyncio

    from rich.markup import escape

    from darkbloom.provider.benchmark import Run, load_model, measure, save_benchmark
    from darkbloom.provider.runtime import SETUP_ERRORS

    settings = provider_settings()
    chosen = model or settings.models[0]
    out = err_console if as_json else console

    def show(index: int, run: Run) -> None:
        label = "warm-up" if index == 0 else f"run {index}"
        out.print(f"{label:>8}: {run.completion_tokens} tokens, {run.decode_tps:.1f} tok/s, "
                  f"TTFT {run.ttft_s * 1000:.0f} ms", highlight=False)

    try:
        with out.status(f"loading {chosen}..."):
            engine = load_model(settings, chosen)
    except SETUP_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; nothing was saved", 130)
    try:
        result = asyncio.run(measure(engine, chosen, max_tokens, show))
    except KeyboardInterrupt:
        fail("interrupted; nothing was saved", 130)
    finally:
        engine.close()
    try:
        path = save_benchmark(settings.config_dir, result)
    except OSError as exc:
        fail(f"cannot save the result in {settings.config_dir}: {exc.strerror}")
    figures = result.figures()
    if as_json:
        print(json.dumps({"model": result.model, **figures, "saved_to": str(path), "runs": [
            {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
             "ttft_ms": round(r.ttft_s * 1000, 1), "decode_tps": round(r.decode_tps, 2),
             "prefill_tps": round(r.prefill_tps, 2)} for r in result.runs]}, indent=2))
        return
    console.print(f"[bold]{escape(result.model)}[/bold]: {figures['decode_tps']} tok/s decode, "
                  f"{figures['prefill_tps']} tok/s prefill, TTFT {figures['ttft_ms']:.0f} ms "
                  f"(median of {len(result.runs)}; saved to {path})", highlight=False)
