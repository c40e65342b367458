# The two commands that do everything on a fresh machine:
#   make run    set up .venv, then run the main job (no arguments: the embedded offline default)
#   make test   set up .venv with the test extras, then run the whole test suite (slow tests included)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-test lint benchmarks

$(BIN)/hf-nullspace: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of this torch lies on these machines; any other version pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/hf-nullspace

$(VENV)/.test-oracles: $(BIN)/hf-nullspace
	# independent implementations the tests compare against: torchattacks without its deps (they break the env), the
	# optional AutoAttack package,
	# imagecorruptions (needs setuptools<81 for pkg_resources)
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1 pyautoattack==0.2.0
	$(BIN)/pip install -q "setuptools<81" imagecorruptions==1.1.2
	# the [peft] extra (LoRA), at the version the tests were written against
	$(BIN)/pip install -q peft==0.21.2
	touch $@

setup-test: $(VENV)/.test-oracles

run: setup
	$(BIN)/accelerate launch trainer_scripts/run.py $(ARGS)

test: setup-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check hf_nullspace tests trainer_scripts benchmarks
	$(BIN)/ruff format --check hf_nullspace tests trainer_scripts benchmarks
