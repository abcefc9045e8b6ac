# rxcqrs: `make demo` and `make test` do all set-up themselves (venv, install, real servers).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RXCQRS := $(VENV)/bin/rxcqrs
PYTEST_ARGS ?=

.PHONY: help install services services-down services-status demo test unit integration contract faults notebooks lint typecheck bench clean

help:
	@echo "make demo     - set up everything, start Kafka + Cassandra, run the main job"
	@echo "make test     - set up everything, start the servers, run unit + integration tests + notebooks"
	@echo "make unit     - fast tests on in-memory fakes only (no servers)"
	@echo "make faults   - the fault suite at full size (its own server pair; SIGKILL, SIGSTOP, restarts)"
	@echo "make bench    - benchmarks side by side, state verified (figures in build/bench.json, not assertions)"
	@echo "make services-down - stop the servers (add WIPE=1 to delete their data)"

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

services: install
	$(RXCQRS) services up

services-down: install
	$(RXCQRS) services down $(if $(WIPE),--wipe,)

services-status: install
	$(RXCQRS) services status

demo: services
	$(RXCQRS) demo

test: services
	$(PY) -m pytest --nbmake --nbmake-timeout=900 tests notebooks $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: services
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

contract: services
	$(PY) -m pytest tests/contract $(PYTEST_ARGS)

faults: services
	RXCQRS_FAULTS_COMMANDS=20000 RXCQRS_FAULTS_CARTS=200 $(PY) -m pytest tests/faults -m faults $(PYTEST_ARGS)

notebooks: services
	$(PY) -m pytest --nbmake notebooks $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check rxcqrs tests benchmarks

typecheck: install
	$(VENV)/bin/mypy rxcqrs

bench: services
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
