# syntax=docker/dockerfile:1
# One image for the tierserve operator (`kopf run`), the pruning job (`python -m
# tierserve.pruning.job`, run by RayJob / the Ray Jobs API) and the Serve tiers (Ray workers).
#
#   docker build -t tierserve:cpu .                                  # CPU torch (default)
#   docker build -t tierserve:cu128 --build-arg TORCH_VARIANT=cu128 . # CUDA 12.8 torch
#
# TORCH_VARIANT picks the PyTorch wheel index (cpu, cu126, cu128, ...). CUDA wheels bring their
# own CUDA runtime libraries as pip packages, so the same slim base serves both; the GPU driver
# comes from the node (NVIDIA container runtime). EXTRAS picks optional extras: `llm` reads GGUF
# decoder checkpoints; `--build-arg EXTRAS=report,llm,assets` bakes the MiniLM example weights in.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# -- build: a virtualenv with torch first (its own cached layer), then tierserve ------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG EXTRAS=report,llm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tierserve ./tierserve
COPY pruning ./pruning
COPY serving ./serving
COPY operator ./operator
RUN pip install "./[${EXTRAS}]" \
    && python -c "import tierserve.pruning.job, tierserve.serving, tierserve.operator, kopf, ray"

# -- runtime: the virtualenv only, a non-root user, no compilers -------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# KubeRay's head/worker probes exec wget; nothing else is installed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends "wget=1.21.*" \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 tierserve \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin tierserve
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0
USER 10001:10001
WORKDIR /home/tierserve
# No ENTRYPOINT: Kubernetes `command` picks the role (the chart runs `kopf run ...`; KubeRay runs
# `ray start ...`; RayJob entrypoints run `python -m tierserve.pruning.job ...`).
CMD ["tierserve", "--help"]
