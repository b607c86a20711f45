# Every target installs what it needs first, so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

# torch 2.13.0 CPU comes from the machine's wheel cache; torchrec is installed without its
# dependencies because its metadata requires the CUDA fbgemm-gpu (fbgemm-gpu-cpu replaces it).
TORCH_PINS := torch==2.13.0 fbgemm-gpu-cpu==1.8.0
TORCHREC_PIN := torchrec==1.8.0

.PHONY: install demo test lint typecheck layers pytest crd bench bench-trainer clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[trainer,operator,dev]'
	# Last, and alone: an install after it would report torchrec's CUDA fbgemm-gpu and torchmetrics pins as
	# a wall of "dependency resolver" errors, although fbgemm-gpu-cpu stands in and torchmetrics 1.9 works.
	$(PIP) install -q --no-deps $(TORCHREC_PIN)
	rm -f $(VENV)/.installed-*
	touch $@

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

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
