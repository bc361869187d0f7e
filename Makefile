# The README's two commands: `make demo` and `make test`. Both build the venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/margin-monitor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(BIN)/margin-monitor
	$(BIN)/margin-monitor run

# Tests need a real mosquitto (and systemd-analyze for the unit checks): .ci/deps installs
# them from Debian when they are missing and we are root; otherwise it says what to install.
test: $(BIN)/margin-monitor
	bash .ci/deps
	$(BIN)/ruff check monitor tests bench
	$(BIN)/mypy monitor
	$(BIN)/pytest

bench: $(BIN)/margin-monitor
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
