"""What continuous batching can give at most on this machine: raw ``llama_decode`` throughput with
B sequences decoding one token each per call, as the provider's engine steps them, without any
of darkbloom around it (no sampling, no Python per token beyond filling the batch).

``python bench/batch_ceiling.py [GGUF]`` prints tokens/s for B = 1, 4, 8 with split and unified
KV; the default model unless a GGUF path is given (e.g. a requantized copy, to see what the
weights' format does to the ceiling).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PROMPT, STEPS, N_CTX = 40, 48, 2048
REPEATS = 5  # each figure is the median of this many runs, interleaved across the settings


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def tokens_per_s(model: Any, sequences: int, unified: bool, threads: int) -> float:
    import llama_cpp

    internals = importlib.import_module("llama_cpp._internals")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = N_CTX * sequences
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = sequences
    params.kv_unified = unified
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = internals.LlamaContext(model=model, params=params, verbose=False)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def put(token: int, pos: int, seq: int, logits: bool) -> None:
        j = batch.n_tokens
        batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
        batch.seq_id[j][0], batch.logits[j] = seq, logits
        batch.n_tokens = j + 1

    try:
        for seq in range(sequences):  # a prompt each, read before the clock starts
            batch.n_tokens = 0
            for i in range(PROMPT):
                put(100 + (i * 7 + seq) % 1000, i, seq, i == PROMPT - 1)
            assert llama_cpp.llama_decode(ctx.ctx, batch) == 0
        start = time.perf_counter()
        for step in range(STEPS):
            batch.n_tokens = 0
            for seq in range(sequences):
                put(200 + step + seq, PROMPT + step, seq, True)
            assert llama_cpp.llama_decode(ctx.ctx, batch) == 0
        return STEPS * sequences / (time.perf_counter() - start)
    finally:
        llama_cpp.llama_batch_free(batch)
        ctx.close()


def main() -> None:
    import llama_cpp

    from darkbloom.inference.catalog import DEFAULT_MODEL

    path = sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_MODEL.weights_path())
    threads = os.cpu_count() or 1
    internals = importlib.import_module("llama_cpp._internals")
    model = internals.LlamaModel(path_model=path, params=llama_cpp.llama_model_default_params(),
                                 verbose=False)
    print(f"{Path(path).name}, {threads} threads, {STEPS} steps after a {PROMPT}-token prompt "
          f"each; medians of {REPEATS} interleaved runs")
    settings = [(1, False), (4, False), (4, True), (8, False), (8, True)]
    runs: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    try:
        for _ in range(REPEATS):
            for sequences, unified in settings:
                runs[(sequences, unified)].append(tokens_per_s(model, sequences, unified, threads))
        one = median(runs[(1, False)])
        print(f"  B=1: {one:.1f} tok/s")
        for sequences, unified in settings[1:]:
            tps = median(runs[(sequences, unified)])
            print(f"  B={sequences} {'unified' if unified else 'split'} KV: {tps:.1f} tok/s "
                  f"({tps / one:.2f}x B=1)", flush=True)
    finally:
        model.close()


if __name__ == "__main__":
    main()
