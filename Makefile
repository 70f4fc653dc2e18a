# chaosbus: everything a fresh Debian machine (as root) needs goes through here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
DEBIAN_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev shellcheck dash busybox

.PHONY: setup system-deps test lint bench demo clean

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check libs services tests bench demo deploy
	$(VENV)/bin/ruff format --check libs services tests bench demo deploy
	$(VENV)/bin/mypy

test: setup
	$(VENV)/bin/ruff check libs services tests bench demo deploy
	$(VENV)/bin/mypy
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/fs_bench.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/rules_bench.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/admission_bench.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/lazy_bench.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/bus_bench.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/experiment_bench.py

demo: setup
	$(PY) demo/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
