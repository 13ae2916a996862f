# `make serve` and `make test` do every set-up step on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.framewire-installed
# The demo page's npm packages (npm ci writes this file last).
WEB_STAMP := demo_web/node_modules/.package-lock.json
# Browser tests drive Debian's Chromium; Playwright's own browser download is not used.
CHROMIUM  ?= /usr/bin/chromium

.PHONY: serve test check lint clean screenshot

# Shell code that runs apt-get install $(1), as root or through sudo, and says what to do
# when neither is possible.
define apt_install
if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
else echo "make: needs the Debian package(s) $(1); install them as root: apt-get install $(1)" >&2; exit 1; fi; \
echo "installing $(1) with apt-get"; \
$$sudo apt-get update -qq && \
$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1) >/dev/null
endef

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'torch==2.13.0'  # before anything that depends on torch, so pip keeps this build
	$(PY) -m pip install --quiet -e '.[dev,engine]'
	touch $@

$(WEB_STAMP): demo_web/package.json demo_web/package-lock.json
	@command -v npm >/dev/null || { $(call apt_install,nodejs npm); }
	cd demo_web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CHROMIUM):
	@$(call apt_install,chromium)

serve: $(STAMP) $(WEB_STAMP)
	$(VENV)/bin/framewire serve $(ARGS)

test: $(STAMP) $(WEB_STAMP) $(CHROMIUM)
	$(PY) -m pytest -q $(PYTEST_ARGS)

check: $(STAMP) $(WEB_STAMP) $(CHROMIUM)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate docs/demo.png: the page mid-use against the echo app.
screenshot: $(STAMP) $(WEB_STAMP) $(CHROMIUM)
	$(PY) -m tests.demo_web.screenshot docs/demo.png --scale 1.5

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo_web/node_modules
