# The commands that do everything on a fresh machine:
#   make run        set up .venv, then run the main job (no arguments: the embedded offline default)
#   make test       set up .venv with the test extras, then run the fast tier: every module on tiny models, in parallel
#   make test-all   the fast tier, then the slow one (multi-process, end-to-end, Hub round trips): what CI runs
#   make test-slow  the slow tier alone
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow test-all setup setup-test lint benchmarks

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

# one pytest-xdist worker per core; pytest's exit code 5 ("no tests collected": an empty tier) is a pass
PYTEST := $(BIN)/python -m pytest -q -n auto $(PYTEST_ARGS)
EMPTY_TIER_PASSES := || [ $$? -eq 5 ]

test: setup-test
	$(PYTEST) -m "not slow" $(EMPTY_TIER_PASSES)

test-slow: setup-test
	$(PYTEST) -m slow $(EMPTY_TIER_PASSES)

test-all: setup-test
	$(PYTEST) -m "not slow" $(EMPTY_TIER_PASSES)
	$(PYTEST) -m slow $(EMPTY_TIER_PASSES)

lint: setup
	$(BIN)/ruff check hf_nullspace tests trainer_scripts benchmarks
	$(BIN)/ruff format --check hf_nullspace tests trainer_scripts benchmarks
