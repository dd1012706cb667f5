# relaygate — the two set-up commands are `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test lint typecheck venv dev-venv browser clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

dev-venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'

serve: venv
	$(BIN)/relaygate serve --host $(HOST) --port $(PORT)

lint: dev-venv
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/python tools/check_provider_names.py
	$(BIN)/python tools/check_header_names.py
	$(BIN)/lint-imports

typecheck: dev-venv
	$(BIN)/mypy --strict src

# Debian's chromium for the dashboard test (Playwright drives it; it never downloads a browser).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: lint typecheck browser
	$(BIN)/python -m pytest -q

# The benchmark (bench/README.md): about 25-30 minutes; BENCH_QUICK=1 for a short smoke run.
# Its relaygate-h2 target needs relaygate's http2 extra (httpx, h2) and hypercorn (pinned as in
# the dev extra) for bench/h2_upstream.py, installed here into the project venv.
# Not part of `make test`.
bench: venv
	$(BIN)/python -m pip install --quiet -e '.[http2]' hypercorn==0.18.0
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
