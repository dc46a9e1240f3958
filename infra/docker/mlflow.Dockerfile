# syntax=docker/dockerfile:1
# MLflow tracking server with the PostgreSQL driver, at the lock's mlflow version (the clients in the
# code location and the serving API use the same one). Backend store: PostgreSQL; artifacts: proxied by
# the server (--serve-artifacts) to --artifacts-destination (a volume, or s3:// on MinIO).
#
#   docker build -f infra/docker/mlflow.Dockerfile -t rag-mlflow .        (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock /tmp/requirements.lock
RUN pip install uv==0.13.9 \
 && uv pip install --python /opt/venv/bin/python -c /tmp/requirements.lock mlflow==3.17.2 psycopg2-binary==2.9.13 \
 && python -c "import mlflow, psycopg2; print('mlflow', mlflow.__version__)"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid mlflow --create-home --home-dir /home/mlflow mlflow \
 && mkdir -p /mlartifacts && chown mlflow:mlflow /mlartifacts
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
USER mlflow
EXPOSE 5000
HEALTHCHECK --interval=20s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--serve-artifacts", "--artifacts-destination", "/mlartifacts"]
