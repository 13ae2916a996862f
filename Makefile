# `make serve` and `make test` do every set-up step on a fresh machine, from the lock files
# in requirements/ (see requirements/README.md): what CI tested is what a new machine installs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pip itself is pinned too: the venv's own pip differs from one Python build to the next.
PIP_VERSION := 26.3
# torch is installed first and kept out of the lock: on this project's machines the CPU build
# comes from a local wheel; elsewhere pass TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (or a CUDA index) to choose the build.
TORCH := torch==2.13.0
TORCH_INDEX ?=
SERVE_STAMP := $(VENV)/.framewire-serve
TEST_STAMP  := $(VENV)/.framewire-test
# The demo page's npm packages (npm ci writes this file last).
WEB_STAMP := demo_web/node_modules/.package-lock.json
# Browser tests drive Debian's Chromium; Playwright's own browser download is not used.
CHROMIUM  ?= /usr/bin/chromium
# Scale-out tests start Debian's redis-server on a free loopback port.
REDIS_SERVER ?= /usr/bin/redis-server
# Where `make lock` finds the torch build the lock is resolved against (a local wheel folder
# here; another machine may use TORCH_INDEX).
LOCK_FIND_LINKS ?= $(wildcard /opt/wheels)
LOCK_FLAGS = --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
	--no-emit-package torch -c requirements/constraints.in \
	$(if $(LOCK_FIND_LINKS),--find-links $(LOCK_FIND_LINKS)) \
	$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)

.PHONY: serve test check lint lock upgrade-lock clean screenshot

# Shell code that runs apt-get install $(1), as root or through sudo, and says what to do
# when neither is possible.
define apt_install
if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
else echo "make: needs the Debian package(s) $(1); install them as root: apt-get install $(1)" >&2; exit 1; fi; \
echo "installing $(1) with apt-get"; \
$$sudo apt-get update -qq && \
$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1) >/dev/null
endef

$(PY):
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(call apt_install,python3-venv); }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'pip==$(PIP_VERSION)'

# What serving needs: torch, then the engine and server packages from the serve lock.
$(SERVE_STAMP): requirements/serve.txt pyproject.toml | $(PY)
	@echo "make: installing $(TORCH) (a large download where no local wheel exists; progress below)"
	$(PY) -m pip install --progress-bar on '$(TORCH)' $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@echo "make: installing the locked server and engine packages (requirements/serve.txt)"
	$(PY) -m pip install --progress-bar on --require-hashes --no-deps -r requirements/serve.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

# What testing adds: the test, lint and benchmark tools from the dev lock.
$(TEST_STAMP): $(SERVE_STAMP) requirements/dev.txt
	@echo "make: installing the locked test and lint tools (requirements/dev.txt)"
	$(PY) -m pip install --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip check
	touch $@

$(WEB_STAMP): demo_web/package.json demo_web/package-lock.json
	@command -v npm >/dev/null || { $(call apt_install,nodejs npm); }
	cd demo_web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CHROMIUM):
	@$(call apt_install,chromium)

$(REDIS_SERVER):
	@$(call apt_install,redis-server)

serve: $(SERVE_STAMP) $(WEB_STAMP)
	$(VENV)/bin/framewire serve $(ARGS)

test: $(TEST_STAMP) $(WEB_STAMP) $(CHROMIUM) $(REDIS_SERVER)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The full check CI runs: formatting, lint, types, then the tests.
check: $(TEST_STAMP) $(WEB_STAMP) $(CHROMIUM) $(REDIS_SERVER)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Re-resolve the lock files after a change to pyproject.toml's dependencies, keeping every
# pin that still fits.
lock: $(TEST_STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra dev --extra engine $(LOCK_FLAGS) -o requirements/dev.txt
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra engine $(LOCK_FLAGS) -c requirements/dev.txt -o requirements/serve.txt

# Move every pin to today's newest release, show what changed, and run the full check on it:
# an upgrade is a deliberate commit, never an accident of the day a machine was set up.
upgrade-lock: $(TEST_STAMP)
	cp requirements/dev.txt $(VENV)/dev.txt.before
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra dev --extra engine $(LOCK_FLAGS) --upgrade -o requirements/dev.txt
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra engine $(LOCK_FLAGS) -c requirements/dev.txt -o requirements/serve.txt
	@echo "make: pins changed by the upgrade (old -> new):"
	@$(PY) requirements/diff_pins.py $(VENV)/dev.txt.before requirements/dev.txt
	$(MAKE) check

# Regenerate docs/demo.png: the page mid-use against the echo app.
screenshot: $(TEST_STAMP) $(WEB_STAMP) $(CHROMIUM)
	$(PY) -m tests.demo_web.screenshot docs/demo.png --scale 1.5

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo_web/node_modules
