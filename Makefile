# Two commands on a fresh machine:  `make run` (set up, then the main job)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))

.PHONY: setup run test lint bench-quick mutation clean

$(BIN)/.mixhub-installed: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]" $(addprefix -e ,$(PLUGINS))
	touch $@

setup: $(BIN)/.mixhub-installed

run: setup
	$(BIN)/mixhub train examples/configs/digits-mixup.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check core plugins tests benchmarks examples tools

bench-quick: setup
	$(BIN)/mixhub bench digits-cls --quick --out bench-out/digits-cls-quick

# Long (not in CI): mutmut over every plugin's functional.py and the core's plan/metrics/schedule.
# Scores land in mutation-out/scores.tsv; see docs/testing.md.  MUTATION_JOBS=N runs N mutants at once.
mutation: setup
	$(BIN)/python tools/mutation.py $(TARGETS)

clean:
	rm -rf runs bench-out mutation-out
