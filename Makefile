# The two commands: `make run` and `make test`. Everything else is set up on the way.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock requirements-dev.lock pyproject.toml | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run demo test bench lock clean tools

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

# Starts the gateway in the foreground: SQLite ledger, upstream from OPENAI_API_KEY /
# OPENAI_BASE_URL, a generated dev token unless PROXY_GATEWAY_TOKEN is set.
# `make run DEMO=1` puts a built-in fake upstream behind it (no OpenAI key needed).
run: $(STAMP)
	PORT=$(PORT) $(BIN)/tallygate serve --host $(HOST) --dev $(if $(DEMO),--demo,)

demo:
	$(MAKE) run DEMO=1

# Debian tools some tests use (shellcheck); installed once when missing.
tools:
	@command -v shellcheck >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq shellcheck) >/dev/null 2>&1 \
	  || echo "warning: could not install shellcheck"; }

test: $(STAMP) tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Re-pin: resolve the newest allowed versions into the two lock files.
lock:
	rm -rf /tmp/tallygate-lock && $(PYTHON) -m venv /tmp/tallygate-lock
	/tmp/tallygate-lock/bin/pip install -q . && /tmp/tallygate-lock/bin/pip freeze --exclude tallygate > /tmp/tallygate-runtime.txt
	/tmp/tallygate-lock/bin/pip install -q '.[test]' && /tmp/tallygate-lock/bin/pip freeze --exclude tallygate > /tmp/tallygate-all.txt
	{ echo "# Runtime dependencies, pinned (the Dockerfile and make run install exactly these)."; \
	  echo "# Regenerate: make lock"; cat /tmp/tallygate-runtime.txt; } > requirements.lock
	{ echo "# Test and development tools, pinned, on top of requirements.lock."; echo "# Regenerate: make lock"; \
	  echo "-r requirements.lock"; comm -23 <(sort /tmp/tallygate-all.txt) <(sort /tmp/tallygate-runtime.txt); } > requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache tallygate.db tallygate.db-*
