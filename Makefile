# Set-up, demo and tests. `make demo` and `make test` each create .venv on first use.
# TORCH pins the PyTorch build; override it for another platform, e.g.
#   make test TORCH="torch==2.5.1 torchvision==0.20.1"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PLUGINS := $(wildcard plugins/*)
EXAMPLE_PLUGINS := $(wildcard examples/advkit-*)
STAMP := $(VENV)/.advkit-installed
DEMO_DIR ?= runs/demo

.PHONY: install demo test benchmark clean

install: $(STAMP)

# Install order matters (docs/install.md): torchattacks 3.5.1 ships an old copy of robustbench and pins
# requests~=2.25.1, so it goes in with --no-deps, and robustbench (also --no-deps, its timm pin is
# exact) is installed after it so its own files win.
$(STAMP): setup.cfg $(wildcard plugins/*/setup.cfg) $(wildcard examples/advkit-*/setup.cfg) requirements-robustness.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q --no-deps torchattacks==3.5.1
	$(PIP) install -q -r requirements-robustness.txt
	$(PIP) install -q --no-deps robustbench==1.1.1
	$(PIP) install -q -e . pytest
	for plugin in $(PLUGINS) $(EXAMPLE_PLUGINS); do $(PIP) install -q -e $$plugin || exit 1; done
	$(PY) -c "from advkit.compat import import_robustbench; import_robustbench()"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/advkit train --dataset digits --model small-cnn --objective trades --eps 0.1 \
		--epochs 8 --batch-size 64 --lr 0.05 --seed 0 --out $(DEMO_DIR) --quiet
	$(VENV)/bin/advkit eval $(DEMO_DIR) --attack clean --attack fgsm --attack pgd --json $(DEMO_DIR)/eval.json

test: $(STAMP)
	$(PY) -m pytest -q --import-mode=importlib -p no:cacheprovider tests $(PLUGINS) examples

benchmark: $(STAMP)
	for script in $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py)); do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
