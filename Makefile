# Developer entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

# Debian packages the tests drive (command:package): Chromium and its driver for the
# dashboard's browser tests, docker-compose to validate docker-compose.yml without an engine.
DEBIAN_TOOLS = chromium:chromium chromedriver:chromium-driver docker-compose:docker-compose \
  promtool:prometheus prometheus-alertmanager:prometheus-alertmanager

.PHONY: install system-deps demo run test test-fast lint bench screenshots clean

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

demo: install
	$(BIN)/energy-collector demo

run: install
	$(BIN)/energy-collector run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install system-deps lint
	$(BIN)/pytest

# The tests that need no PostgreSQL, Mosquitto or browser: seconds, anywhere.
test-fast: install
	$(BIN)/pytest -m "not services and not browser"

# The README's dashboard picture, made by the browser test from a simulated fleet.
screenshots: install system-deps
	SCREENSHOT_DIR=docs $(BIN)/pytest -q tests/test_dashboard_browser.py -k simulated

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
