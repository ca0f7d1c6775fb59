# Two commands on a fresh machine:  `make run` (set up, then the main job)  and  `make test`.
# `make run` installs what the main job uses (torch, the core, the method plugins); the logger
# plugins (TensorBoard, MLflow, W&B and their libraries) come with `make loggers`; `make test`
# installs everything the tests use (the loggers and the test tools too).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
LOGGER_PLUGINS := plugins/mlflow/ plugins/tensorboard/ plugins/wandb/
METHOD_PLUGINS := $(filter-out $(LOGGER_PLUGINS),$(PLUGINS))

.PHONY: setup loggers run test lint bench-quick mutation clean

$(BIN)/.mixhub-installed: pyproject.toml $(addsuffix pyproject.toml,$(METHOD_PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e . $(addprefix -e ,$(METHOD_PLUGINS))
	touch $@

$(BIN)/.mixhub-loggers: $(BIN)/.mixhub-installed $(addsuffix pyproject.toml,$(LOGGER_PLUGINS))
	$(BIN)/pip install -q $(addprefix -e ,$(LOGGER_PLUGINS))
	touch $@

$(BIN)/.mixhub-test: $(BIN)/.mixhub-loggers
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.mixhub-installed

loggers: $(BIN)/.mixhub-loggers

run: setup
	$(BIN)/mixhub train examples/configs/digits-mixup.yaml

test: $(BIN)/.mixhub-test
	$(BIN)/python -m pytest -q

lint: $(BIN)/.mixhub-test
	$(BIN)/ruff check core plugins tests benchmarks examples tools

bench-quick: setup
	$(BIN)/mixhub bench digits-cls --quick --out bench-out/digits-cls-quick

# Long (not in CI): mutmut over every plugin's functional.py and the core's plan/metrics/schedule.
# Scores land in mutation-out/scores.tsv; see docs/testing.md.  MUTATION_JOBS=N runs N mutants at once.
mutation: $(BIN)/.mixhub-test
	$(BIN)/python tools/mutation.py $(TARGETS)

clean:
	rm -rf runs bench-out mutation-out
