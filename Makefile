# The two set-up commands of the README. Both create .venv and install the pinned
# requirements on first use, so a fresh machine needs nothing but python3 and make.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: quickstart test test-fast notebooks

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Trains VGG-A on scikit-learn's bundled handwritten digits: offline, CPU, a few minutes.
quickstart: $(VENV)/.installed
	WANDB_MODE=$${WANDB_MODE:-disabled} $(PYTHON) train.py --config configs/quickstart_digits.yaml

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	WANDB_MODE=disabled $(PYTHON) -m pytest -q

# Skips the real-data, multi-process and full-size torchvision tests.
test-fast: $(VENV)/.installed
	WANDB_MODE=disabled $(PYTHON) -m pytest -q -m "not slow"

# Re-executes every notebook in place through a Jupyter kernel: the outputs committed with them.
notebooks: $(VENV)/.installed
	WANDB_MODE=disabled $(VENV)/bin/jupyter execute --inplace --timeout=600 notebooks/*.ipynb
