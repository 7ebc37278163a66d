# cccad's image: Debian's Python and the locked closure from PyPI, the project last.
#   make image                  (podman build, or CONTAINER_ENGINE=docker; see README, Containers)
# The default base is plain Debian 12: PyPI's torch 2.13.0 for Linux x86_64 is a CUDA 13.0 build
# that brings its CUDA runtime as nvidia-* wheels, and the NVIDIA driver comes from the host
# (apptainer --nv, NVIDIA container toolkit), so a CUDA base image would only add a second CUDA.
ARG BASE_IMAGE=docker.io/library/debian:bookworm
FROM ${BASE_IMAGE}

# python3 is bookworm's 3.11; g++ and python3-dev: DeepSpeed compiles its ops at first use;
# tini: PID 1 that passes SIGTERM on (podman stop, preemption) so the stage can checkpoint
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ tini \
    && rm -rf /var/lib/apt/lists/*
# PYTHONSAFEPATH: `python -m cccad` does not put the working directory (a checkout, bound in by
# apptainer) first on sys.path, so the image's cccad is the one imported
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 PYTHONNOUSERSITE=1
WORKDIR /opt/cccad
# the locked closure (make lock): every package with its hash, nothing resolved here
COPY requirements-image-build.txt requirements-image.txt ./
RUN python3 -m venv /opt/venv \
    && pip install --require-hashes --no-deps -r requirements-image-build.txt \
    && pip install --require-hashes --no-deps --no-build-isolation -r requirements-image.txt \
    && pip check

# the project: a new commit rebuilds from here on only
COPY pyproject.toml ./
COPY cccad ./cccad
COPY configs ./configs
COPY jobs ./jobs
COPY slurm ./slurm
RUN pip install --no-deps --no-build-isolation -e . && cccad --help >/dev/null
ARG BASE_IMAGE
ARG GIT_COMMIT=unknown
ARG GIT_DIRTY=unknown
ARG BUILD_DATE=unknown
# read by the run manifest (cccad/runinfo.py: image_build) as the code that ran
RUN python -c "import hashlib, json, sys; json.dump({'git_commit': sys.argv[1], 'git_dirty': sys.argv[2], \
'build_date': sys.argv[3], 'base_image': sys.argv[4], 'lock_sha256': hashlib.sha256(open( \
'requirements-image.txt', 'rb').read()).hexdigest()}, open('IMAGE_BUILD.json', 'w'), indent=1)" \
    "$GIT_COMMIT" "$GIT_DIRTY" "$BUILD_DATE" "$BASE_IMAGE"
ENTRYPOINT ["tini", "--", "cccad"]
CMD ["--help"]
