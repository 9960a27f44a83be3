# The project's commands. `make demo` and `make test` are the two a newcomer needs;
# both set up everything on first use (virtualenv, Debian packages, Maven jars, services).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A JDK, Maven and python3-venv, installed with apt-get when missing (or the command to run).
PREREQS := PYTHON=$(PYTHON) sh nxnw/services/prerequisites.sh

.PHONY: demo test faults services services-down status bench setup

$(STAMP): pyproject.toml
	@$(PREREQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	@$(PREREQS)
	$(BIN)/nxnw demo

test: $(STAMP)
	@$(PREREQS)
	$(BIN)/nxnw services up
	$(BIN)/python -m pytest

# The fault campaign: every fault in every phase, sqlite->sqlite and cassandra->hbase; a table,
# exit 1 on any cell that lost, resurrected or read stale (see README for how long it takes).
faults: $(STAMP)
	$(BIN)/nxnw services up
	$(BIN)/python -m nxnw.fault_matrix

services: $(STAMP)
	$(BIN)/nxnw services up

services-down: $(STAMP)
	$(BIN)/nxnw services down

status: $(STAMP)
	$(BIN)/nxnw services status

bench: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/nxnw services up
	$(BIN)/python -m bench
