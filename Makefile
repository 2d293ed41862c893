# agentpost: `make run` starts a server on embedded SQLite; `make test` installs what the tests
# need and runs them on SQLite and PostgreSQL.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./data
export AGENTPOST_DATA_DIR ?= $(DATA_DIR)

.PHONY: run venv test test-sqlite test-postgresql check bench clean

$(BIN)/agentpost: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/agentpost

venv: $(BIN)/agentpost

run: venv
	test -f $(AGENTPOST_DATA_DIR)/agentpost.toml || $(BIN)/agentpost init
	$(BIN)/agentpost serve

test:
	bash scripts/install-test-deps.sh
	$(MAKE) test-sqlite test-postgresql

test-sqlite:
	AGENTPOST_TEST_BACKEND=sqlite $(BIN)/pytest -q -p no:cacheprovider tests

test-postgresql:
	AGENTPOST_TEST_BACKEND=postgresql $(BIN)/pytest -q -p no:cacheprovider tests --ignore=tests/proto

check: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: venv
	bash scripts/install-test-deps.sh
	$(BIN)/python bench/inbound/run.py
	$(BIN)/python bench/outbound/run.py
	$(BIN)/python bench/realtime/run.py

clean:
	rm -rf $(VENV) build *.egg-info
