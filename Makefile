# Everything a fresh machine with only Python 3.11 needs: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench tools lock clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Offline validators that do not come from PyPI, from Debian (as root, with apt-get):
# docker-compose (compose config check), prometheus (promtool: alert rules, dashboard PromQL) and
# chromium (the status page tested in a headless browser), git (the doctor's git checks).
# One apt-get update for whatever is missing; a warning (and a clear pytest skip) if it cannot be installed.
# The prometheus package enables its server: stopped and disabled again at once (only promtool is used).
APT_TOOLS := docker-compose:docker-compose promtool:prometheus chromium:chromium git:git
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600
tools:
	@missing=""; for pair in $(APT_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "warning:$$missing missing and cannot apt-get install them; their checks will be skipped"; exit 0; fi; \
	$(APT_GET) update -qq || echo "warning: apt-get update failed"; \
	for pkg in $$missing; do \
	  $(APT_GET) install -y -qq --no-install-recommends $$pkg >/dev/null \
	    || echo "warning: could not install $$pkg; its checks will be skipped"; \
	  if [ $$pkg = prometheus ]; then \
	    if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1; \
	    else service prometheus stop >/dev/null 2>&1; fi; true; fi; \
	done

# The image's runtime dependencies (pyproject.toml [project] dependencies), pinned with
# sha256 hashes for every wheel and sdist of each pin, so the same lock serves x86_64 and
# aarch64 images (--universal; --python-version = the image's CPython, python:3.11-slim).
# Needs the package index. Commit the result; tests/test_lock.py checks it still covers pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	  --no-emit-index-url --no-emit-find-links --custom-compile-command 'make lock' \
	  --quiet -o requirements.lock

run: $(STAMP)
	$(BIN)/python -m sidecar.demo

test: $(STAMP) tools
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_sync.py

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
