# small-model-search: one image for every role (worker, collect, research, dashboard).
#
#   docker build -t small-model-search .                # CUDA (the default)
#   docker build -t small-model-search:cpu --build-arg BASE_IMAGE=ubuntu:24.04 --build-arg REQUIRE_CUDA=0 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# The contract the Kubernetes manifests rely on: code in /app (the working directory),
# the virtual environment in /opt/venv (on PATH), ENTRYPOINT /app/entrypoint.sh ROLE,
# numeric non-root user 10001:10001, and nothing written outside /tmp at run time (the
# root filesystem is read-only there, with an emptyDir at /tmp).

# torch==2.14.1 from PyPI is the CUDA 13.0 build (torch.version.cuda == "13.0"; it
# depends on cuda-toolkit==13.0.3), so the default base is CUDA 13.0.3's *runtime* image
# (no compilers); the host needs an NVIDIA driver that supports CUDA 13.0 (>= 580).
# Ubuntu 24.04 ships Python 3.12, for which every pin in requirements.txt has a wheel.
ARG BASE_IMAGE=nvidia/cuda:13.0.3-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------
# python-base: the base image plus the distribution's Python. Both later stages start FROM
# this one stage, so the interpreter the venv was built against (/usr/bin/python3 and its
# standard library) is byte-for-byte the one it runs on, and /opt/venv can be copied as is.
FROM ${BASE_IMAGE} AS python-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# ARG, not ENV: it is for apt-get here, not for the image at run time.
ARG DEBIAN_FRONTEND=noninteractive
# Not pinned to exact Debian versions: Ubuntu's archive drops superseded versions after
# each security update, so an exact pin stops building within weeks. The release fixes
# the minor version (24.04: Python 3.12), and the check below fails a base without 3.11+.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c 'import sys; sys.exit(None if sys.version_info >= (3, 11) else "error: the base image has Python " + sys.version.split()[0] + "; the pins need 3.11 or newer")'

# ---------------------------------------------------------------------------------------
# build: the virtual environment from the pinned requirements. Wheels only: there is no
# compiler here either, and a missing wheel should fail the build, not compile.
FROM python-base AS build
# Optional extra index for torch/torchvision, e.g. https://download.pytorch.org/whl/cpu;
# its local versions (2.14.1+cpu) satisfy the ==2.14.1 pins and sort above PyPI's.
ARG TORCH_INDEX_URL=""
# 1: fail the build unless torch is a CUDA build; 0 for a CPU image.
ARG REQUIRE_CUDA=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --only-binary=:all: \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -r /tmp/requirements.txt \
    && python -c 'import matplotlib, numpy, optuna, optuna_dashboard, prometheus_client, psycopg2, sklearn, sqlalchemy, torch, torchvision, yaml'
# The CUDA assertion: a CPU-only torch in the default image would train on the CPU of a
# GPU node without a word, so the build stops here instead.
RUN python -c 'import os, sys, torch; cuda = torch.version.cuda; print(f"torch {torch.__version__}, CUDA {cuda}"); sys.exit(None if cuda or os.environ.get("REQUIRE_CUDA") == "0" else f"error: torch {torch.__version__} is not a CUDA build (torch.version.cuda is None); install the CUDA wheel, or build a CPU image with --build-arg REQUIRE_CUDA=0")'

# ---------------------------------------------------------------------------------------
# runtime: the same Python, the venv, the code. No compilers, no pip cache, no tests.
FROM python-base AS runtime
ARG BASE_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="small-model-search" \
      org.opencontainers.image.description="Multi-objective search of small image classifiers (architecture + RandAugment) with Optuna: worker, collector, re-searcher and dashboard roles" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY requirements.txt ./
COPY configs/ configs/
COPY job/ job/
COPY entrypoint.sh ./
# Byte-compile the code now (at run time the filesystem is read-only, and
# PYTHONDONTWRITEBYTECODE keeps Python from trying), make it world-readable whatever the
# checkout's umask was, then prove the entry point and the copied venv work; /tmp is
# left empty.
RUN python -m compileall -q job \
    && chmod -R a+rX,go-w /app \
    && chmod 0755 entrypoint.sh \
    && ./entrypoint.sh --help > /dev/null \
    && python -m job --help > /dev/null \
    && rm -rf /tmp/*
# Everything above is root-owned and read-only to the user the pods run as.
USER 10001:10001
EXPOSE 8080 9100
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["--help"]
