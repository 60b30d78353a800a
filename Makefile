# Developer entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

# Debian packages the tests drive (command:package): Chromium and its driver for the
# dashboard's browser tests, docker-compose to validate docker-compose.yml without an engine.
DEBIAN_TOOLS = chromium:chromium chromedriver:chromium-driver docker-compose:docker-compose \
  promtool:prometheus prometheus-alertmanager:prometheus-alertmanager

# Citus for tests/test_citus.py: built from source once per machine (Debian has no package)
# when it is not installed and the build script is at hand; another with CITUS_BUILD=path.
CITUS_BUILD ?= ../shared/vendor/build-citus.sh
PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_config) pg_config)

.PHONY: install system-deps citus demo run test test-fast lint bench screenshots clean

$(BIN)/energy-collector: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/energy-collector

system-deps:
	@missing=$$(for pair in $(DEBIAN_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

citus:
	@if [ -f "$$($(PG_CONFIG) --pkglibdir 2>/dev/null)/citus.so" ]; then :; \
	elif [ -x "$(CITUS_BUILD)" ] || [ -f "$(CITUS_BUILD)" ]; then \
	  echo "building Citus (once per machine, a few minutes): $(CITUS_BUILD)"; \
	  PG_CONFIG=$(PG_CONFIG) bash $(CITUS_BUILD); \
	else echo "Citus is not installed and $(CITUS_BUILD) is not here: the Citus tests are skipped"; fi

demo: install
	$(BIN)/energy-collector demo

run: install
	$(BIN)/energy-collector run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install system-deps citus lint
	$(BIN)/pytest

# The tests that need no PostgreSQL, Mosquitto or browser: seconds, anywhere.
test-fast: install
	$(BIN)/pytest -m "not services and not browser"

# The README's dashboard picture, made by the browser test from a simulated fleet.
screenshots: install system-deps
	SCREENSHOT_DIR=docs $(BIN)/pytest -q tests/test_dashboard_browser.py -k simulated

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
