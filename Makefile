# vpnca: `make run` starts a development CA and the service, `make test` lints, type-checks and runs the whole
# suite, `make lint` only lints and type-checks (ruff and mypy, settings in pyproject.toml), `make bench` benchmarks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VPNCA_HOME ?= $(CURDIR)/.vpnca

.PHONY: deps venv run lint test bench clean

deps:
	./scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: deps venv
	@if [ ! -f "$(VPNCA_HOME)/vpnca.toml" ]; then \
		$(VENV)/bin/vpnca init --softhsm --domain example.com --ip-range 10.0.0.0/8 --ip-range 192.0.2.0/24; \
	fi
	$(VENV)/bin/vpnca status
	$(VENV)/bin/vpnca -v serve

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

# test files run in parallel, each file whole on one worker (its module-scoped daemons stay together);
# most of the suite waits on real daemons, so more workers than cores pay off
TEST_WORKERS ?= 3

test: deps venv lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: deps venv
	$(PY) -m pytest tests/bench -q -s

clean:
	rm -rf $(VENV) .vpnca .pytest_cache
