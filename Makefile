# One entry point for people and CI. `make run` and `make test` work as the first command on a
# fresh clone: both create .venv/ on demand and re-sync it whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench eval preview clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/newsletter demo

test: $(STAMP)
	$(BIN)/ruff format --check newsletter tests scripts
	$(BIN)/ruff check newsletter tests scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format newsletter tests scripts
	$(BIN)/ruff check --fix newsletter tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

eval: $(STAMP)
	$(BIN)/python scripts/eval.py

preview: $(STAMP)
	$(BIN)/newsletter ingest > /dev/null
	$(BIN)/newsletter preview --all -o var/preview
	@echo "Open var/preview/index.html in a browser."

clean:
	rm -rf var/newsletter.db* var/outbox var/preview var/replay build dist
