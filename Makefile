# Everything a fresh machine with only Python 3.11 needs: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Offline validators for the deploy files that do not come from PyPI; git for the doctor tests.
tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	      || echo "warning: could not install docker-compose; its config check will be skipped"; \
	  else echo "warning: docker-compose missing and cannot apt-get install it"; fi; }
	@command -v git >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get -o DPkg::Lock::Timeout=600 install -y -qq git >/dev/null) \
	      || echo "warning: could not install git; the doctor's git tests will be skipped"; \
	  else echo "warning: git missing and cannot apt-get install it (doctor's git tests skipped)"; fi; }

run: $(STAMP)
	$(BIN)/python -m sidecar.demo

test: $(STAMP) tools
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_sync.py

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
