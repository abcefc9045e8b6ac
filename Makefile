# rxcqrs: `make demo` and `make test` do all set-up themselves (venv, install, real servers).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RXCQRS := $(VENV)/bin/rxcqrs
PYTEST_ARGS ?=

.PHONY: help install services services-down services-status demo test unit integration contract faults faults-cluster notebooks bench-cluster lint typecheck bench clean

help:
	@echo "make demo     - set up everything, start Kafka + Cassandra, run the main job"
	@echo "make test     - set up everything, start the servers, run unit + integration tests + notebooks"
	@echo "make unit     - fast tests on in-memory fakes only (no servers)"
	@echo "make faults   - the fault suite at full size (its own server pair; SIGKILL, SIGSTOP, restarts)"
	@echo "make faults-cluster - node loss on a 3-node Kafka + Cassandra of its own (replication 3)"
	@echo "make bench    - benchmarks side by side, state verified (figures in build/bench.json, not assertions)"
	@echo "make bench-cluster - 1, 2 and 3 consumer processes on a 3-node cluster of its own (replication 3)"
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
	$(PY) -m pytest --nbmake --nbmake-timeout=900 -m "not long_cluster" tests notebooks $(PYTEST_ARGS)

unit: install  # the fast tier: fakes and virtual clocks, two workers, no notebook plugin
	$(PY) -m pytest -p no:nbmake -n 2 tests/unit $(PYTEST_ARGS)

integration: services
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

contract: services
	$(PY) -m pytest tests/contract $(PYTEST_ARGS)

faults: services
	RXCQRS_FAULTS_COMMANDS=20000 RXCQRS_FAULTS_CARTS=200 $(PY) -m pytest tests/faults -m faults $(PYTEST_ARGS)

faults-cluster: install
	$(RXCQRS) services fetch
	RXCQRS_FAULTS_COMMANDS=20000 RXCQRS_FAULTS_CARTS=200 $(PY) -m pytest tests/faults -m cluster $(PYTEST_ARGS)

notebooks: services
	$(PY) -m pytest --nbmake notebooks $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check rxcqrs tests benchmarks

typecheck: install
	$(VENV)/bin/mypy rxcqrs

bench: services
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks $(BENCH_ARGS)

# a 3-node cluster beside the single-node servers: its own home and ports, nodes on 127.0.0.1-3
CLUSTER_ENV = RXCQRS_HOME=$(HOME)/.cache/rxcqrs/cluster RXCQRS_NODES=3 RXCQRS_KAFKA_PORT=19092 \
	RXCQRS_KAFKA_CONTROLLER_PORT=19093 RXCQRS_CASSANDRA_PORT=19042 RXCQRS_CASSANDRA_STORAGE_PORT=17000 \
	RXCQRS_CASSANDRA_JMX_PORT=17199 RXCQRS_KAFKA_BOOTSTRAP=127.0.0.1:19092,127.0.0.2:19092,127.0.0.3:19092 \
	RXCQRS_CASSANDRA_HOSTS=127.0.0.1,127.0.0.2,127.0.0.3

bench-cluster: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(CLUSTER_ENV) $(RXCQRS) services up
	$(CLUSTER_ENV) $(PY) -m benchmarks --only scale --processes 1 2 3 --replication 3 \
		--json build/bench-cluster.json $(BENCH_ARGS); rc=$$?; $(CLUSTER_ENV) $(RXCQRS) services down; exit $$rc

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
