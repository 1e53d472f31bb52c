# Set-up and everyday commands. `make run` serves the embedded default model;
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# torch and torchvision are pinned to the pair this project is tested with.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install run test lint bench clean screenshots

$(BIN)/cgd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[cpu,dev]"
	touch $@

install: $(BIN)/cgd

run: install
	$(BIN)/cgd serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cpu

# The console's screenshots in docs/screenshots/ (README shows them), refreshed from those the browser
# tests take into a temporary folder (a test run itself never writes into the repository).
screenshots: install
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	CONSOLE_SCREENSHOTS="$$tmp" $(BIN)/python -m pytest -q tests/service/static/test_console.py && \
	mkdir -p docs/screenshots && cp "$$tmp"/search.png "$$tmp"/gallery.png "$$tmp"/training.png docs/screenshots/

clean:
	rm -rf $(VENV) build *.egg-info
