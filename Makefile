# The two commands of the README: `make serve` and `make test`; `make bench` measures.
VENV ?= .venv
ARGS ?= --model tiny --weights random
BENCH_ARGS ?=

.PHONY: setup serve test lint test-deps bench

setup:
	./scripts/setup.sh

serve: setup
	$(VENV)/bin/streamseg serve $(ARGS)

bench: setup
	$(VENV)/bin/streamseg bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check streamseg tests
	$(VENV)/bin/mypy streamseg

test-deps:
	./scripts/test-deps.sh

test: setup test-deps lint
	$(VENV)/bin/python -m pytest -q -m "not browser" --durations=25
	./scripts/test-browser.sh
