# cccad on a CUDA base. Same pins as `make install` (requirements.txt): on Linux x86_64 the
# registry's torch==2.13.0 wheel is the CUDA build, so the one file serves CPU and GPU installs.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ARG GIT_COMMIT=unknown
ARG BUILD_DATE=unknown
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    CCCAD_GIT_COMMIT=${GIT_COMMIT} CCCAD_IMAGE_BUILD_DATE=${BUILD_DATE}
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev g++ ninja-build git \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/cccad
COPY requirements.txt pyproject.toml ./
RUN pip install -r requirements.txt
COPY cccad ./cccad
COPY configs ./configs
COPY jobs ./jobs
COPY slurm ./slurm
RUN pip install --no-deps -e . \
    && python -c "import json,os; json.dump({'git_commit': os.environ['CCCAD_GIT_COMMIT'], \
'build_date': os.environ['CCCAD_IMAGE_BUILD_DATE'], 'base': 'nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04'}, \
open('/opt/cccad/IMAGE_BUILD.json', 'w'))"
ENTRYPOINT ["cccad"]
CMD ["--help"]
