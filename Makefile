# The two commands: `make run` and `make test`. Everything else is set up on the way.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run demo test lint bench lock clean tools

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

# Starts the gateway in the foreground: SQLite ledger, upstream from OPENAI_API_KEY /
# OPENAI_BASE_URL, a generated dev token unless PROXY_GATEWAY_TOKEN is set.
# `make run DEMO=1` puts a built-in fake upstream behind it (no OpenAI key needed).
run: $(STAMP)
	PORT=$(PORT) $(BIN)/tallygate serve --host $(HOST) --dev $(if $(DEMO),--demo,)

demo:
	$(MAKE) run DEMO=1

# Debian tools some tests use (shellcheck; Chromium and its WebDriver for tests/test_console.py);
# installed once when missing.
tools:
	@command -v shellcheck >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq shellcheck) >/dev/null 2>&1 \
	  || echo "warning: could not install shellcheck"; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
	  || echo "warning: could not install chromium and chromium-driver (tests/test_console.py needs them)"; }

# ruff lint over the package and the tests, ruff format and mypy over the package; make test runs it first
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src
	$(BIN)/mypy

test: $(STAMP) tools lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Re-pin with pip-compile (pip-tools): every pin carries the sha256 of each file PyPI has for it,
# and pip installs with --require-hashes. Existing pins are kept (new dependencies are added);
# `make lock UPGRADE=1` moves everything to the newest allowed versions. The dev lock holds the
# runtime pins too (hash-checking mode cannot follow -r into a file), constrained to the same versions.
LOCK_VENV  := /tmp/tallygate-lock
PIP_TOOLS  := pip-tools==7.6.2
LOCK_FLAGS := -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
              --no-header $(if $(UPGRADE),--upgrade,)
lock:
	@test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q "$(PIP_TOOLS)"; }
	$(LOCK_VENV)/bin/pip-compile $(LOCK_FLAGS) -o requirements.lock pyproject.toml
	$(LOCK_VENV)/bin/pip-compile $(LOCK_FLAGS) --extra test --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml
	sed -i '1i # Runtime dependencies, pinned with hashes (the Dockerfile installs exactly these).\n# Regenerate: make lock' requirements.lock
	sed -i '1i # Runtime, test and development tools, pinned with hashes (make test / make run install these).\n# Regenerate: make lock' requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache tallygate.db tallygate.db-*
