# Every target sets up what it needs: on a fresh clone `make demo` and `make test` are enough.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test-compat` runs the suite under this (older) Airflow, in a virtualenv of its own, installed
# with constraints/constraints-$(AIRFLOW_VERSION).txt. The default is the oldest supported release.
AIRFLOW_VERSION ?= 3.0.0
COMPAT_VENV := .venv-$(AIRFLOW_VERSION)
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed
COMPAT_CONSTRAINTS := constraints/constraints-$(AIRFLOW_VERSION).txt

.PHONY: demo test test-compat lint bench system-deps venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# PostgreSQL (for the PostgreSQL-backed tests) and Chromium (for the UI test) come from Debian's
# packages; install them when missing and we may (root). Otherwise those tests skip, except in CI.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	fi

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

$(COMPAT_STAMP): pyproject.toml $(COMPAT_CONSTRAINTS)
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install --quiet --upgrade pip
	$(COMPAT_PY) -m pip install --quiet -c $(COMPAT_CONSTRAINTS) -e ".[test]" "apache-airflow==$(AIRFLOW_VERSION)"
	touch $(COMPAT_STAMP)

constraints/constraints-%.txt:
	@echo "No constraints/constraints-$*.txt: Airflow $* is not a tested version (see README, Supported Airflow versions)." >&2; exit 1

test-compat: $(COMPAT_STAMP) system-deps
	$(COMPAT_PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check airflow_provider_fbca tests example_dags bench scripts
	$(VENV)/bin/ruff format --check airflow_provider_fbca tests example_dags bench scripts

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-* .pytest_cache build *.egg-info
