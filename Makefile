# Fresh-machine entry points: `make run` (set up, then the main job) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test setup setup-test graphviz bench clean

run: setup graphviz
	$(BIN)/netc check specs/*.net
	$(BIN)/netc compile specs/resnet20.net
	mkdir -p out
	$(BIN)/netc draw specs/resnet20.net -o out/resnet20.svg
	$(BIN)/netc draw specs/resnet20.net --collapse -o out/resnet20-blocks.svg

test: setup-test graphviz
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/compile_speed.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e .

setup-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# Graphviz's `dot` renders svg/png/pdf; .dot output never needs it.
graphviz:
	@command -v dot >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq graphviz; }

clean:
	rm -rf $(VENV) out build *.egg-info
