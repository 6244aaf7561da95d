# reson8-voice: `make demo` runs the main job, `make test` the checks. Both set up .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test lint typecheck pytest bench demo serve clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "reson8-voice needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,local,agents]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check reson8_voice tests benchmarks examples agents

typecheck: $(STAMP)
	$(BIN)/mypy reson8_voice

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

serve: $(STAMP)
	$(BIN)/reson8-voice serve

demo: $(STAMP)
	$(BIN)/reson8-voice demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
