# syntax=docker/dockerfile:1
# The Dagster code location `rag` (rag_assets.definitions) as a gRPC code server on port 4000. The
# webserver and daemon load definitions from it; runs launched from it execute this image too (as
# subprocesses with the DefaultRunLauncher in Docker Compose, as Kubernetes Jobs with the K8sRunLauncher),
# so it carries torch, the bundled model and dagster-k8s.
#
#   docker build -f infra/docker/code-location.Dockerfile -t rag-code-location .   (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY requirements.lock ./
COPY infra/docker/requirements-k8s.txt /tmp/requirements-k8s.txt
# As scripts/install.sh does: torch alone first (the CPU build), then the lock with --no-deps.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install uv==0.13.9 \
 && grep -vE '^(torch|pytest|pytest-timeout|ruff|playwright|kubernetes-validate)==' requirements.lock > /tmp/requirements.txt \
 && uv pip install --python /opt/venv/bin/python --no-deps -r /tmp/requirements.txt -r /tmp/requirements-k8s.txt
COPY pyproject.toml README.md workspace.yaml ./
COPY rag_core ./rag_core
COPY rag_assets ./rag_assets
COPY rag_serving ./rag_serving
COPY evals ./evals
RUN uv pip install --python /opt/venv/bin/python --no-deps -e . \
 && HF_HUB_OFFLINE=1 python -c "import torch, dagster, dagster_k8s, dagster_postgres, rag_assets.assets"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 rag \
 && useradd --system --uid 10001 --gid rag --create-home --home-dir /home/rag rag \
 && mkdir -p /var/lib/rag /opt/dagster/dagster_home /var/lib/dagster/compute_logs /documents \
 && chown -R rag:rag /var/lib/rag /opt/dagster /var/lib/dagster /documents
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --chown=rag:rag infra/docker/dagster/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    RAG_DATA_DIR=/var/lib/rag \
    RAG_DOCUMENTS_DIR=/documents
USER rag
EXPOSE 4000
HEALTHCHECK --interval=20s --timeout=10s --start-period=90s --retries=3 \
  CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "rag_assets.definitions", "--location-name", "rag"]
