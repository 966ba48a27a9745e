.PHONY: run test bench bench-latency lint bootstrap clean

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	@.venv/bin/darkbloom up

test: bootstrap
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy src
	.venv/bin/python -m pytest -q

bench: bootstrap
	.venv/bin/python bench/run.py

# Only the side-by-side section of docs/BENCHMARKS.md (darkbloom, llama-cpp-python's server,
# LiteLLM, in-process llama.cpp); the peers' venvs are made under ~/.cache/darkbloom/bench-peers.
bench-latency: bootstrap
	.venv/bin/python bench/run.py --latency

clean:
	rm -rf .venv .darkbloom
