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

.PHONY: install lock demo test lint format docs benchmark wheel-check clean

install: $(STAMP)

# One pip call resolves advkit, its extras and every plugin against constraints.txt (the tested versions).
# torchattacks 3.5.1's wheel also carries an old copy of robustbench's files; if pip happened to unpack it
# last, robustbench is reinstalled over it (docs/install.md). `pip check` must then be clean.
$(STAMP): setup.cfg $(wildcard plugins/*/setup.cfg) $(wildcard examples/advkit-*/setup.cfg) constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c constraints.txt -e ".[all,dev]" $(addprefix -e ,$(PLUGINS) $(EXAMPLE_PLUGINS))
	$(PY) -c "from advkit.compat import import_robustbench; import_robustbench()" 2>/dev/null \
		|| $(PIP) install -q --no-deps --force-reinstall robustbench==1.1.1
	$(PY) -c "from advkit.compat import import_robustbench; import_robustbench()"
	$(PIP) check
	touch $(STAMP)

# Rewrite constraints.txt from the current venv: every installed distribution except advkit's own and
# the PyTorch build, which TORCH chooses.
lock: $(STAMP)
	{ echo "# The tested dependency set (make lock writes it); use it with: pip install -c constraints.txt ..."; \
	  $(PIP) freeze --exclude-editable | grep -viE '^(torch|torchvision|triton|nvidia-|cuda-)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# What a pip user gets: wheels of advkit and every plugin (python -m build), installed into a fresh venv
# as files (not editable), must give a clean `pip check`, every plugin, and a working train and eval.
WHEEL_VENV ?= build/wheel-venv
wheel-check: $(STAMP)
	rm -rf dist $(WHEEL_VENV)
	for project in . $(PLUGINS); do $(PY) -m build -q --wheel --no-isolation --outdir dist $$project >/dev/null || exit 1; done
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(WHEEL_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
		"$$(ls dist/advkit-*.whl)[all]" $$(ls dist/advkit_*.whl)
	$(WHEEL_VENV)/bin/python -c "from advkit.compat import import_robustbench; import_robustbench()" 2>/dev/null \
		|| $(WHEEL_VENV)/bin/python -m pip install -q --no-deps --force-reinstall robustbench==1.1.1
	$(WHEEL_VENV)/bin/python -m pip check
	.ci/wheel-smoke.sh $(WHEEL_VENV)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/advkit train --dataset digits --model small-cnn --objective trades --eps 0.1 \
		--epochs 8 --batch-size 64 --lr 0.05 --seed 0 --out $(DEMO_DIR) --quiet
	$(VENV)/bin/advkit eval $(DEMO_DIR) --attack clean --attack fgsm --attack pgd --json $(DEMO_DIR)/eval.json

test: $(STAMP)
	$(PY) -m pytest -q --import-mode=importlib -p no:cacheprovider tests $(PLUGINS) examples

# Lint, formatting and types (settings in pyproject.toml; the same checks as .pre-commit-config.yaml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Apply ruff's fixes and formatting in place.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The documentation site (mkdocs.yml); --strict turns every broken link or reference into an error.
# Its tools have their own venv: mkdocs-material needs a newer requests than torchattacks allows. The CLI
# reference imports advkit.cli from the checkout (click only); the API reference reads the source.
DOCS_VENV ?= .venv-docs
$(DOCS_VENV)/.installed: docs/requirements.txt
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install -q --disable-pip-version-check -r docs/requirements.txt
	touch $@

docs: $(DOCS_VENV)/.installed
	PYTHONPATH=$(CURDIR) NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --quiet

benchmark: $(STAMP)
	for script in $(filter-out benchmarks/_%,$(wildcard benchmarks/*.py)); do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) $(DOCS_VENV) runs build dist site *.egg-info
