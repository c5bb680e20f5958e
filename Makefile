# The two set-up commands of the README. Both create .venv and install the pinned
# requirements on first use, so a fresh machine needs nothing but python3 and make.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: quickstart test test-fast notebooks test-device-stack

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Trains VGG-A on scikit-learn's bundled handwritten digits: offline, CPU, a few minutes.
quickstart: $(VENV)/.installed
	WANDB_MODE=$${WANDB_MODE:-disabled} $(PYTHON) train.py --config configs/quickstart_digits.yaml

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PYTHON) -m mypy
	WANDB_MODE=disabled $(PYTHON) -m pytest -q

# Skips the real-data, multi-process and full-size torchvision tests.
test-fast: $(VENV)/.installed
	WANDB_MODE=disabled $(PYTHON) -m pytest -q -m "not slow"

# Re-executes every notebook in place through a Jupyter kernel: the outputs committed with them.
notebooks: $(VENV)/.installed
	WANDB_MODE=disabled $(VENV)/bin/jupyter execute --inplace --timeout=600 notebooks/*.ipynb

# The GPU machines' Python stack (requirements-device-stack.txt: Python 3.12, torch 2.11,
# no wandb/albumentations/nbformat) on this CPU: the whole suite, then the dry run of
# benchmarks/gpu_session.sh, which fails if any of its steps does. A GPU session is too
# short to lose to an import or an API a CPU could have caught. Several GB of downloads
# and about 15 minutes on 2 idle cores, so not part of `make test` (README "Tests").
DEVICE_VENV := .venv-device
PYTHON312 ?= python3.12
DRY_RUN_OUT ?= $(DEVICE_VENV)/dry-run

$(DEVICE_VENV)/.installed: requirements-device-stack.txt
	@$(PYTHON312) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null || { \
	  echo "make test-device-stack needs Python 3.12 (the GPU machines' version): install" \
	  "it, or name it with PYTHON312=/path/to/python3.12"; exit 2; }
	$(PYTHON312) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/pip install -q --disable-pip-version-check -r requirements-device-stack.txt
	touch $@

CIFAR_ZIP := ../shared/data/cifar10

test-device-stack: $(DEVICE_VENV)/.installed
	WANDB_MODE=disabled $(DEVICE_VENV)/bin/python -m pytest -q
	rm -rf $(DRY_RUN_OUT) $(DEVICE_VENV)/carry && mkdir -p $(DEVICE_VENV)/carry
	ln -s $(abspath $(CIFAR_ZIP))/cifar10-train-jpeg.zip $(abspath $(CIFAR_ZIP))/make_pickles.py \
	  $(DEVICE_VENV)/carry/
	DEVICE=cpu QUICK=1 TIME_PERCENT=300 PYTHON=$(DEVICE_VENV)/bin/python OUT=$(DRY_RUN_OUT) \
	  CARRY=$(DEVICE_VENV)/carry bash benchmarks/gpu_session.sh
