.PHONY: run test bench lint bootstrap clean

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

clean:
	rm -rf .venv .darkbloom
