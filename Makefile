# The two commands of the README: `make serve` and `make test`.
VENV ?= .venv
ARGS ?= --model tiny --weights random

.PHONY: setup serve test lint test-deps

setup:
	./scripts/setup.sh

serve: setup
	$(VENV)/bin/streamseg serve $(ARGS)

lint: setup
	$(VENV)/bin/ruff check streamseg tests
	$(VENV)/bin/mypy streamseg

test-deps:
	./scripts/test-deps.sh

test: setup test-deps lint
	$(VENV)/bin/python -m pytest -q -m "not browser"
	./scripts/test-browser.sh
