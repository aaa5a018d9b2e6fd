# reelflow: `make demo` and `make test` both work on a fresh machine (they set everything up).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The upload page's tus client, from npm at build time (the gateway serves it at /static/vendor/).
WEB := deployments/gateway/web
TUS_BUNDLE := $(WEB)/static/vendor/tus.min.js
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export REELFLOW_HOME ?= $(CURDIR)/.reelflow

.PHONY: setup ffmpeg clamav chromium js demo test test-e2e lint typecheck bench clean lock chaos

setup: $(STAMP) ffmpeg clamav $(TUS_BUNDLE)

# Installs are reproducible: every package, direct or not, at the version in requirements.lock.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# Refresh requirements.lock from pyproject.toml (newest versions its ranges allow), then run
# `make test`. The lock names no package index (--no-emit-index-url / --no-emit-find-links).
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --upgrade --no-header --no-emit-index-url --no-emit-find-links --strip-extras \
		--allow-unsafe --extra dev -o requirements.lock pyproject.toml

ffmpeg:
	@if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then \
		echo "installing Debian ffmpeg"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	fi

# The tests start their own clamd (own config and signature database; no freshclam needed).
clamav:
	@if ! command -v clamd >/dev/null && ! test -x /usr/sbin/clamd; then \
		echo "installing Debian clamav-daemon"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clamav-daemon >/dev/null; \
	fi

# tus-js-client for the gateway tests (an independent tus client under Node), from the lock.
js: $(TUS_BUNDLE)
	@test -d tests/js/node_modules || (cd tests/js && npm ci --no-audit --no-fund)

# tus-js-client's browser bundle (UMD, global `tus`) at the version of the page's npm lock.
$(TUS_BUNDLE): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund
	mkdir -p $(@D) && cp $(WEB)/node_modules/tus-js-client/dist/tus.min.js $@

# The upload page's browser test drives Debian's Chromium (tests/e2e/test_upload_page.py);
# the emoji font draws the captions' emoji in its screenshot.
chromium:
	@if ! command -v chromium >/dev/null || ! test -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf; then \
		echo "installing Debian chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; \
	fi

demo: setup
	@mkdir -p $(REELFLOW_HOME)
	@test -s $(REELFLOW_HOME)/sample.mp4 || $(BIN)/reelflow sample $(REELFLOW_HOME)/sample.mp4 --duration 20
	$(BIN)/python -m reelflow.demo $(REELFLOW_HOME)/sample.mp4

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

# Tests marked `long` (minutes-long repeats of what other tests cover) run in `make chaos`.
test: setup js chromium lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider --durations=25 -m "not long"

# The end-to-end tests (real `prefect server start`, workers, served deployments) alone;
# `make test` runs them too.
test-e2e: setup
	$(BIN)/pytest -q -p no:cacheprovider -m e2e

# The kill + fault suite at full size: 50 seeded kill points (REELFLOW_CHAOS_SEED picks them)
# and 20 runs under 10 % faults; prints the tally per step and the retries per hop.
chaos: setup
	REELFLOW_CHAOS_POINTS=$${REELFLOW_CHAOS_POINTS:-50} REELFLOW_FAULT_RUNS=$${REELFLOW_FAULT_RUNS:-20} \
		$(BIN)/pytest -q -p no:cacheprovider -m "chaos or long" tests/e2e

# The quick set: end to end at 8 MB and 512 MiB (both Prefect modes), then upload only. The
# rest (1 GiB, --link MBIT, bench.publish, bench.gateway) is in each bench's docstring.
bench: setup
	$(BIN)/python -m bench.e2e --sizes 8MB,512MiB
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) .reelflow .cache
