# syntax=docker/dockerfile:1
# One image for the operator (kopf run), the pruning job and the Serve tiers.
# CPU by default; for CUDA torch build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tierserve ./tierserve
COPY pruning ./pruning
COPY serving ./serving
COPY operator ./operator
RUN pip install ".[report]"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin tierserve
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/tierserve
ENTRYPOINT ["tierserve"]
CMD ["--help"]
