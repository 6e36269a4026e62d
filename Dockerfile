# syntax=docker/dockerfile:1
# One image, two entry points: `rft` (the job runtime, what RFTJob pods run) and `rft-operator` (the chart's
# Deployment). Default name: ghcr.io/rft-platform/rft-runtime:<version>, the name the chart and the operator's
# RFTJob default (rft_operator.spec.DEFAULT_IMAGE) both use; see docs/install.md.
#
#   docker build -t ghcr.io/rft-platform/rft-runtime:0.1.0 .
#   docker build --build-arg WITH_ENGINE=true -t ghcr.io/rft-platform/rft-runtime:0.1.0-engine .
#   docker build --build-arg WITH_TRINITY=true -t ghcr.io/rft-platform/rft-runtime:0.1.0-trinity .
#
# The base is pinned to an exact Python patch release and Debian release. For byte-for-byte reproducible builds
# pin the digest too: PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest from
# `docker buildx imagetools inspect python:3.11.13-slim-bookworm`>.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build stage: resolve and install everything into a virtualenv; nothing of this stage ships but the venv
FROM ${PYTHON_IMAGE} AS build

# The local Tinker-compatible engine (torch, transformers) is off by default: Tinker jobs send training to the
# Tinker service and never load a model in the pod; the installed venv is ~0.9 GB without torch, and torch plus
# the engine add well over 1 GB more.
# WITH_ENGINE=true adds it with torch 2.13.0 (`rft quickstart` and `rft engine` then work in the image). veRL
# jobs need the CUDA image of Dockerfile.verl (docs/install.md).
ARG WITH_ENGINE=false
# WITH_TRINITY=true adds trinity-rft 0.6.0 (the `trinity` extra: Trinity's own workflow and reward classes run on
# this runtime, and the workflows bound to an environment need it), with the same CPU torch: no vLLM, no GPU.
ARG WITH_TRINITY=false
ARG TORCH_VERSION=2.13.0
# Where pip looks is the builder's to say, as pip is configured on their machine; no address is written here.
# TORCH_INDEX_URL: the index torch alone comes from; PyTorch's CPU wheel index gives the CPU build the engine
# image is meant to carry. Left empty, torch comes from pip's index like everything else, and on Linux x86_64
# the default index's torch is the CUDA build, several GB larger. PIP_INDEX_URL / PIP_EXTRA_INDEX_URL: a mirror
# for every package.
ARG TORCH_INDEX_URL=
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/rft
ENV PATH=/opt/rft/bin:$PATH

WORKDIR /src
# torch (the largest piece) goes in before the sources are copied, so code edits reuse that layer.
COPY pyproject.toml README.md ./
RUN if [ "$WITH_ENGINE" = "true" ] || [ "$WITH_TRINITY" = "true" ]; then \
      pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"; \
    fi
COPY runtime ./runtime
COPY operator ./operator
# A regular (not editable) install: the final image carries the installed packages, not /src.
RUN extras="runtime,operator"; \
    if [ "$WITH_ENGINE" = "true" ]; then extras="$extras,engine"; fi; \
    if [ "$WITH_TRINITY" = "true" ]; then extras="$extras,trinity"; fi; \
    pip install ".[${extras}]" \
    && rft --help >/dev/null \
    && if [ "$WITH_TRINITY" = "true" ]; then python -c "import rft_runtime.workflows.registry as r; \
r.get_workflow('trinity.common.workflows.eval_workflow.MathEvalWorkflow')"; fi \
    && rft-operator --help >/dev/null \
    && find /opt/rft -name '__pycache__' -prune -exec rm -rf {} +
# The engine image also carries the quickstart's tiny random model and task data, so the operator can be
# smoke-tested without a Tinker account or a download (examples/rftjobs/local-engine.yaml).
RUN if [ "$WITH_ENGINE" = "true" ]; then \
      rft engine make-model /opt/rft/share/quickstart/model \
      && python -c "from pathlib import Path; from rft_runtime.quickstart_task import write_task_files; \
write_task_files(Path('/opt/rft/share/quickstart/data'))" \
      && find /opt/rft -name '__pycache__' -prune -exec rm -rf {} +; \
    fi

# ---- final stage: the slim base, the venv, a non-root user; no compilers, no pip caches, no sources
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rft-runtime" \
      org.opencontainers.image.description="RFTJob runtime (rft) and operator (rft-operator)" \
      org.opencontainers.image.source="https://github.com/rft-platform/rft-platform" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# uid/gid 1000: the runAsUser of the operator's job pods (rft_operator.builders.RUN_AS) and of the chart.
RUN groupadd --gid 1000 rft \
    && useradd --uid 1000 --gid 1000 --home-dir /home/rft --create-home --shell /usr/sbin/nologin rft

COPY --from=build /opt/rft /opt/rft

ENV PATH=/opt/rft/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/rft

# Numeric, so that the kubelet can verify runAsNonRoot without looking the name up.
USER 1000:1000
WORKDIR /home/rft

# No ENTRYPOINT: the operator's pods run `rft run ...`, the chart runs `rft-operator ...`.
CMD ["rft", "--help"]
