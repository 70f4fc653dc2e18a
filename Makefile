# chaosbus: everything a fresh Debian machine (as root) needs goes through here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# redis-server, sqlite3 and postgresql: the databases the crash-consistency tests run.
DEBIAN_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev shellcheck dash busybox \
	redis-server sqlite3 postgresql

.PHONY: setup system-deps test test-unit lint bench demo clean

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# The virtualenv holds exactly what requirements/dev.txt locks (every file checked
# against its hash), then the project itself, editable, adding nothing.
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check || { echo "requirements/ disagree with pyproject.toml: make lock"; exit 1; }
	touch $@

# The lock files, from pyproject.toml: requirements/dev.txt (setup and CI) with
# every extra and the tools, then one per image (requirements/<extra>.txt), held
# to dev.txt's versions so that every image runs what CI tested. Versions already
# locked are kept; `make lock UPGRADE=1` takes the newest each pin allows.
LOCKED_EXTRAS := chaosfs chaosctl template-watcher injector controller auth
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
.PHONY: lock
lock: system-deps
	test -x $(VENV)/bin/uv || { python3 -m venv $(VENV) \
	  && $(PY) -m pip install -q --require-hashes --no-deps -r requirements/dev.txt; }
	$(UV_COMPILE) pyproject.toml --extra dev -o requirements/dev.txt
	for extra in $(LOCKED_EXTRAS); do \
	  $(UV_COMPILE) pyproject.toml --extra $$extra -c requirements/dev.txt \
	    -o requirements/$$extra.txt || exit 1; \
	done

lint: setup
	$(VENV)/bin/ruff check libs services tests bench demo deploy scripts
	$(VENV)/bin/ruff format --check libs services tests bench demo deploy scripts
	$(VENV)/bin/mypy

# Both tiers: the unit tier as nobody (test-unit), then the system tests as root.
test: setup test-unit
	$(VENV)/bin/ruff check libs services tests bench demo deploy scripts
	$(VENV)/bin/mypy
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest --ignore=tests/unit $(PYTEST_ARGS)

# The unit tier as an unprivileged user (nobody, when make runs as root): no root, no
# /dev/fuse, no nats-server, no network. It writes only into a scratch directory of its
# own (HOME, TMPDIR, hypothesis's examples), never into the tree. When nobody cannot
# enter the tree or reach the virtualenv's Python (a clone under /root, a pyenv
# interpreter), it keeps the one capability to read and search directories
# (CAP_DAC_READ_SEARCH): enough to read the code, no right to write or to open /dev/fuse.
UNIT_PY := $(abspath $(PY))
test-unit: setup
	@scratch=$$(mktemp -d /tmp/chaosbus-unit.XXXXXX); trap 'rm -rf "$$scratch"' EXIT; \
	as=(); \
	if [ "$$(id -u)" = 0 ]; then \
	  chown nobody "$$scratch"; \
	  if runuser -u nobody -- "$(UNIT_PY)" -c 'import chaosbus, chaosfs, pytest; open("tests/unit/__init__.py")' 2>/dev/null; then \
	    as=(runuser -u nobody --); \
	  else \
	    echo "test-unit: nobody cannot read $(CURDIR) or its Python; it may read and search directories, nothing more"; \
	    as=(setpriv --reuid=nobody --regid="$$(id -g nobody)" --clear-groups --no-new-privs \
	        --inh-caps=-all,+dac_read_search --ambient-caps=+dac_read_search \
	        --bounding-set=-all,+dac_read_search --); \
	  fi; \
	fi; \
	"$${as[@]}" env HOME="$$scratch" TMPDIR="$$scratch" PYTHONDONTWRITEBYTECODE=1 \
	  HYPOTHESIS_STORAGE_DIRECTORY="$$scratch/hypothesis" \
	  "$(UNIT_PY)" -m pytest tests/unit -p no:cacheprovider $(PYTEST_ARGS)

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
