"""One provider process serving two models, each in its own llama.cpp context with its own slot,
against a real coordinator whose catalog file adds the second model.

The second model is the default model's weights under another catalog id (a second GGUF on this
machine, as `darkbloom models download` leaves it): the test needs two models, not two networks'
worth of weights.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from darkbloom.inference.catalog import DEFAULT_MODEL
from tests.e2e.fakes import FakeProvider, Job
from tests.e2e.harness import MODEL, Coordinator, Provider
from tests.e2e.test_failover import chat_body

SECOND = "smollm2-twin"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, Provider]]:
    workdir = tmp_path_factory.mktemp("several")
    weights = DEFAULT_MODEL.weights_path()
    assert weights is not None
    catalog = workdir / "catalog.toml"
    catalog.write_text(f'''[[models]]
id = "{SECOND}"
display_name = "SmolLM2 135M, a second catalog entry"
context_length = 8192
quantization = "Q4_1"
size_bytes = {weights.stat().st_size}
sha256 = "{DEFAULT_MODEL.weight_hash}"
filename = "{SECOND}.gguf"
download_url = "http://127.0.0.1:9/{SECOND}.gguf"
''')
    coordinator = Coordinator(workdir, catalog_file=catalog, heartbeat_interval_s=1).start()
    provider = Provider(coordinator, slots=1)
    models = Path(provider.env["DARKBLOOM_PROVIDER_CONFIG_DIR"]) / "models"
    models.mkdir(parents=True)
    shutil.copyfile(weights, models / f"{SECOND}.gguf")
    (models / f"{SECOND}.gguf.json").write_text(json.dumps({"id": SECOND, "context_length": 8192}))
    provider.env["DARKBLOOM_PROVIDER_MODELS"] = json.dumps([MODEL, SECOND])
    provider.start()
    yield coordinator, provider
    provider.stop()
    coordinator.stop()


def test_both_models_are_offered_each_with_its_own_slot(network: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = network
    listed = {m.id for m in coordinator.client().models.list().data}
    assert {MODEL, SECOND} <= listed
    log = provider.log_text()
    assert log.index(f"loading {SECOND}") < log.index("connected to coordinator")


async def test_each_model_is_routed_to_its_own_context(network: tuple[Coordinator, Provider]) -> None:
    """Requests for both models at once, each answered by its own model (a second request for the
    one-slot model waits its turn; that the coordinator counts each model's slots is tested in
    tests/unit/coordinator/routing/test_scheduler.py)."""
    coordinator, _ = network
    client = coordinator.async_client()

    async def ask(model: str) -> tuple[str, str]:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Count to five."}], max_tokens=24,
            temperature=0)
        return reply.model, reply.choices[0].message.content or ""

    answers = await asyncio.gather(ask(MODEL), ask(SECOND), ask(SECOND))
    assert [model for model, _ in answers] == [MODEL, SECOND, SECOND]
    assert answers[0][1] == answers[1][1] == answers[2][1]  # same weights, greedy: same text



async def answer_ok(job: Job) -> None:
    await job.accepted()
    await job.chunk(chat_body("ok"))
    await job.complete()


async def test_a_request_no_engine_of_the_model_can_do_is_a_400_naming_the_parameter(
        tmp_path: Path) -> None:
    """A provider whose engine lacks logprobs (mlx-lm, say): a request for logprobs is refused
    with OpenAI's unsupported_parameter before any provider sees it; the rest is served."""
    coordinator = Coordinator(tmp_path).start()
    try:
        async with FakeProvider(coordinator, model={"capabilities": ["stop_sequences", "seed"]},
                                behaviour=answer_ok) as fake:
            await asyncio.to_thread(coordinator.wait_providers, 1)
            client = coordinator.async_client()
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                    logprobs=True)
            error = refused.value.body
            assert isinstance(error, dict)
            assert (error["code"], error["param"]) == ("unsupported_parameter", "logprobs")
            assert fake.requests == 0
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, seed=7)
            assert fake.requests == 1
    finally:
        coordinator.stop()
