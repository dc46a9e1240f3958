# syntax=docker/dockerfile:1
# Dagster webserver and daemon (one image, two commands). No user code and no torch here: they load the
# definitions from the code-location gRPC server (dagster/workspace.yaml) and keep the instance in
# PostgreSQL (dagster/dagster.yaml, DAGSTER_PG_URL).
#   webserver: dagster-webserver -h 0.0.0.0 -p 3000 -w /opt/dagster/workspace.yaml   (the default CMD)
#   daemon:    dagster-daemon run -w /opt/dagster/workspace.yaml
#
#   docker build -f infra/docker/dagster.Dockerfile -t rag-dagster .      (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock /tmp/requirements.lock
# Only the Dagster packages, every version (theirs and their dependencies') taken from the lock as
# constraints: the same pins as the code location, without torch or the rest of the platform.
RUN pip install uv==0.13.9 \
 && uv pip install --python /opt/venv/bin/python -c /tmp/requirements.lock \
      dagster==1.13.27 dagster-webserver==1.13.27 dagster-postgres==0.29.27 \
 && python -c "import dagster, dagster_webserver, dagster_postgres; print('dagster', dagster.__version__)"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 dagster \
 && useradd --system --uid 10001 --gid dagster --create-home --home-dir /home/dagster dagster \
 && mkdir -p /opt/dagster/dagster_home /var/lib/dagster/compute_logs \
 && chown -R dagster:dagster /opt/dagster /var/lib/dagster
COPY --from=build /opt/venv /opt/venv
COPY --chown=dagster:dagster infra/docker/dagster/dagster.yaml /opt/dagster/dagster_home/dagster.yaml
COPY --chown=dagster:dagster infra/docker/dagster/workspace.yaml /opt/dagster/workspace.yaml
WORKDIR /opt/dagster
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home
USER dagster
EXPOSE 3000
# The webserver's check; the daemon service overrides it with `dagster-daemon liveness-check`.
HEALTHCHECK --interval=20s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/server_info', timeout=4)"]
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/opt/dagster/workspace.yaml"]
