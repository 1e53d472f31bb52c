# Set-up and everyday commands. `make run` serves the embedded default model;
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# torch and torchvision are pinned to the pair this project is tested with.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install run test lint bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info
