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

# Offline validators for the deploy files that do not come from PyPI.
tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	      || echo "warning: could not install docker-compose; its config check will be skipped"; \
	  else echo "warning: docker-compose missing and cannot apt-get install it"; fi; }

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
