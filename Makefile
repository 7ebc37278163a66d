# cccad: `make smoke` and `make test` each install into .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make submit: the study and cluster profile (e.g. make submit STUDY=configs/studies/smoke.yaml)
STUDY ?= configs/studies/full.yaml
PROFILE ?= slurm/profiles/local.yaml

.PHONY: install smoke test bench clean cluster-up cluster-down submit status

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

smoke: install
	$(VENV)/bin/cccad local configs/studies/smoke.yaml
	$(VENV)/bin/cccad local configs/studies/worldmodel_smoke.yaml
	@echo "reports: runs/smoke/report/report.md runs/worldmodel_smoke/report/report.md"

# two streams side by side (tests/conftest.py): the SLURM tests and the rest; one thread per
# process, as two streams of 2-thread processes on 2 cores spend their time contending
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup tests

# SLURM: the study as job arrays (returns once submitted), then its state by task
submit: install
	$(VENV)/bin/cccad submit $(STUDY) --cluster $(PROFILE)

status: install
	$(VENV)/bin/cccad status $(STUDY)

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf runs

# a real SLURM cluster on this machine (root; state in .slurm-local/); NODES=2: two nodes, each in
# its own network namespace
NODES ?= 1
cluster-up:
	NODES=$(NODES) bash slurm/local/up.sh

cluster-down:
	bash slurm/local/down.sh
