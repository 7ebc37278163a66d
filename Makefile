# cccad: `make smoke` and `make test` each install into .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make submit: the study and cluster profile (e.g. make submit STUDY=configs/studies/smoke.yaml)
STUDY ?= configs/studies/full.yaml
PROFILE ?= slurm/profiles/local.yaml

.PHONY: install smoke test bench clean cluster-up cluster-down submit status lock image sif sif-smoke

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

# ----------------------------------------------------------------------------- containers
# (README, Containers). The image: podman (or CONTAINER_ENGINE=docker) builds the Dockerfile on
# BASE_IMAGE. BUILD_FLAGS: this machine's own build settings, never the recipe's, e.g. the CA
# bundle of a TLS proxy mounted for pip: BUILD_FLAGS="-v /etc/ssl/certs/ca-certificates.crt:/etc/host-ca.crt:ro
# -v $$PWD/pip.conf:/etc/pip.conf:ro" with that pip.conf saying `[global]` `cert = /etc/host-ca.crt`
CONTAINER_ENGINE ?= podman
IMAGE ?= localhost/cccad:latest
BASE_IMAGE ?= docker.io/library/debian:bookworm
BUILD_FLAGS ?=
IMAGE_INPUTS := requirements-image-build.txt requirements-image.txt pyproject.toml cccad configs jobs slurm
GIT_COMMIT = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# dirty: what the image copies differs from the commit
GIT_DIRTY = $(shell test -z "$$(git status --porcelain -- $(IMAGE_INPUTS) 2>/dev/null)" && echo false || echo true)

image:
	$(CONTAINER_ENGINE) build $(BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg GIT_COMMIT=$(GIT_COMMIT) --build-arg GIT_DIRTY=$(GIT_DIRTY) \
		--build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) -t $(IMAGE) .

# the image's lock: uv resolves requirements-image*.in for Linux x86_64 / Python 3.11 from PyPI,
# every file hashed (--native-tls: the system's CA store)
UV := .lock-venv/bin/uv
UV_COMPILE := $(UV) pip compile --quiet --native-tls --index-url https://pypi.org/simple --python-version 3.11 \
	--python-platform x86_64-manylinux_2_36 --generate-hashes --custom-compile-command "make lock"
lock:
	test -x $(UV) || { $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet uv==0.13.8; }
	$(UV_COMPILE) requirements-image-build.in -o requirements-image-build.txt
	$(UV_COMPILE) requirements-image.in -o requirements-image.txt

# The SIF (apptainer.def), and the smoke study run by apptainer exec with runs/ bound. APPTAINER:
# the command (here, where Debian 12 has no apptainer: APPTAINER=containers/apptainer.sh);
# SIF_FLAGS, e.g. --build-arg BOOTSTRAP=oci-archive --build-arg BASE_IMAGE=bookworm.tar
APPTAINER ?= apptainer
SIF ?= cccad.sif
SIF_FLAGS ?=
sif:
	$(APPTAINER) build $(SIF_FLAGS) --build-arg GIT_COMMIT=$(GIT_COMMIT) --build-arg GIT_DIRTY=$(GIT_DIRTY) \
		--build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) $(SIF) apptainer.def

sif-smoke:
	mkdir -p runs
	$(APPTAINER) exec --cleanenv --env CCCAD_IMAGE=$(SIF) --bind $(CURDIR)/runs $(SIF) cccad local /opt/cccad/configs/studies/smoke.yaml --runs $(CURDIR)/runs
