# The two commands: `make demo` and `make test`. Each creates .venv when missing, and makes
# it again when it was made by another Python than $(PYTHON) (PYTHON=python3.12 make test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

# "ok cpython-3.11.7" or "old cpython-3.10.12": which Python it is, and whether it will do.
PROBE := import sys; v = sys.version_info; print("ok" if v >= (3, 11) else "old", "%s-%d.%d.%d" % (sys.implementation.name, *v[:3]))
FOUND := $(shell $(PYTHON) -c '$(PROBE)' 2>/dev/null)
WANT := $(lastword $(FOUND))

ifneq ($(MAKECMDGOALS),clean)
ifeq ($(FOUND),)
$(error hitrate needs Python 3.11 or newer, and '$(PYTHON)' does not run: install one, then e.g. make PYTHON=python3.12 test)
endif
ifeq ($(firstword $(FOUND)),old)
$(error hitrate needs Python 3.11 or newer, and '$(PYTHON)' is $(WANT): e.g. make PYTHON=python3.12 test)
endif
endif

# The Python that made .venv ("broken" when its interpreter no longer runs); STALE is set
# when that is not $(PYTHON), and then .venv is made again.
MADE_BY := $(if $(wildcard $(VENV)),$(or $(lastword $(shell $(PY) -c '$(PROBE)' 2>/dev/null)),broken))
STALE := $(filter-out $(WANT),$(MADE_BY))

.PHONY: demo test test-frameworks lint typecheck unit bench bench-peers soak clean FORCE

$(PY): $(if $(STALE),FORCE)
	$(if $(STALE),@echo "$(VENV) was made by $(STALE) (not $(WANT)): making it again" >&2)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hitrate demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(STAMP)
	$(PY) benchmarks/hit_path.py

# hitrate against its peers (dogpile.cache, cashews, aiocache, cachekit) in a venv of its own,
# so the peers never enter .venv; writes docs/benchmarks.md and docs/benchmarks.png.
# make bench-peers BENCH_ARGS=--quick for a short run.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
BENCH_ARGS ?=

$(PEERS_STAMP): pyproject.toml benchmarks/requirements-peers.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q -e '.[server]' -r benchmarks/requirements-peers.txt
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python benchmarks/peers.py $(BENCH_ARGS)

# Not part of `make test`: 10 minutes of mixed load with Redis killed and paused midway
# (SOAK_ARGS="--minutes 2" for a short run).
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) build dist .pytest_cache .mypy_cache .ruff_cache

# The frameworks' own test suites on hitrate's backends (Django's BaseCacheTests,
# Flask-Caching's tests), fetched from their sdists with pip the first time.
test-frameworks: $(STAMP)
	$(PY) tests/frameworks/django_suite.py
	$(PY) tests/frameworks/flask_suite.py
