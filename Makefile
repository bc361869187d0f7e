# The README's two commands: `make demo` and `make test`. Both build the venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean lock

$(BIN)/margin-monitor: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the application's dependencies exactly as locked (hashes checked), as in the image
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

# After changing dependencies in pyproject.toml: `make lock` re-resolves requirements.lock
# (hashes of every file; tests/security/test_supply_chain.py checks it covers pyproject).
lock: $(BIN)/margin-monitor
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

demo: $(BIN)/margin-monitor
	$(BIN)/margin-monitor run

# Tests need a real mosquitto (and systemd-analyze for the unit checks): .ci/deps installs
# them from Debian when they are missing and we are root; otherwise it says what to install.
test: $(BIN)/margin-monitor
	bash .ci/deps
	$(BIN)/ruff check monitor tests bench
	$(BIN)/ruff format --check monitor tests bench
	$(BIN)/mypy monitor
	$(BIN)/pytest

bench: $(BIN)/margin-monitor
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
