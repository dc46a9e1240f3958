# syntax=docker/dockerfile:1
# The serving API: `rag-serve serve` (FastAPI + uvicorn) on port 8000. It reads the index the Dagster
# assets built in Milvus; it never builds it. One uvicorn worker per container (Prometheus metrics live
# in the process): scale with replicas.
#
#   docker build -f infra/docker/serving.Dockerfile -t rag-serving .      (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY requirements.lock ./
# As scripts/install.sh does: torch alone first (the CPU build: no CUDA download), then every other pin
# of the lock with --no-deps (no resolver run). Test-only tools are left out of the image.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install uv==0.13.9 \
 && grep -vE '^(torch|pytest|pytest-timeout|ruff|playwright|kubernetes-validate)==' requirements.lock > /tmp/requirements.txt \
 && uv pip install --python /opt/venv/bin/python --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY rag_core ./rag_core
COPY rag_assets ./rag_assets
COPY rag_serving ./rag_serving
COPY evals ./evals
# Editable, like `make install`: the web page (rag_serving/static) and the vendored eval set stay in place.
RUN uv pip install --python /opt/venv/bin/python --no-deps -e . \
 && HF_HUB_OFFLINE=1 python -c "import torch, pymilvus, rag_serving.app; print('torch', torch.__version__)"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 rag \
 && useradd --system --uid 10001 --gid rag --create-home --home-dir /home/rag rag \
 && mkdir -p /var/lib/rag && chown rag:rag /var/lib/rag
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAG_DATA_DIR=/var/lib/rag
USER rag
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["rag-serve", "serve", "--host", "0.0.0.0", "--port", "8000"]
