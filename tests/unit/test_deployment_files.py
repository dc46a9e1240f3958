"""The production profile's deployment files, validated offline: the Docker Compose file, the Dockerfiles,
the Kubernetes manifests (against the Kubernetes OpenAPI schemas shipped by `kubernetes-validate`), the
Helm values, the Prometheus config and alert rules (`promtool` when installed — required in CI) and the
Grafana dashboard (only metric names the serving API exports)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rag_core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
DOCKER = INFRA / "docker"
K8S = INFRA / "k8s"
HELM = K8S / "helm"
PROMETHEUS = INFRA / "prometheus"
GRAFANA = INFRA / "grafana"

# The Kubernetes version the manifests are validated against (schemas ship with kubernetes-validate).
K8S_VERSION = "1.31.0"

# Environment variables the platform's containers may set that are not rag_core.settings fields.
NON_SETTINGS_ENV = {
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "DAGSTER_PG_URL",  # infra/dagster.yaml and infra/docker/dagster/dagster.yaml
    "PYTHONUNBUFFERED",
}

# Index, evaluation and Dagster metrics besides rag_serving/metrics.py's (`rag metrics`,
# rag_assets/operations.py): exposed name -> label names.
PLATFORM_METRICS = {
    "rag_index_last_success_timestamp_seconds": set(),
    "rag_index_rows": {"collection"},
    "rag_index_up": set(),
    "rag_eval_ndcg_at_10": set(),
    "rag_dagster_failed_runs_total": set(),
}
PROMETHEUS_BUILTIN_METRICS = {"up"}
TARGET_LABELS = {"job", "instance", "service", "platform"}


# ----------------------------------------------------------------------------------------------------
# helpers


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def settings_env_names() -> set[str]:
    """Every environment variable name rag_core.settings.Settings reads."""
    names: set[str] = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{name}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.update(str(choice).upper() for choice in alias.choices)
    return names


INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Docker Compose `${VAR:-default}` with the defaults (the environment of the test is not used)."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", str(value))


def lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_settings_accept(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings built from exactly this environment (no .env file): the values must parse."""
    for name in settings_env_names() | NON_SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return Settings(_env_file=None)


# ----------------------------------------------------------------------------------------------------
# Docker Compose

EXPECTED_SERVICES = {
    "postgres",
    "redis",
    "etcd",
    "minio",
    "milvus",
    "mlflow",
    "code-location",
    "dagster-webserver",
    "dagster-daemon",
    "serving",
    "index-metrics",
    "prometheus",
    "grafana",
}
# service -> (host port, container port) that must be published
EXPECTED_PORTS = {
    "serving": ("8000", "8000"),
    "dagster-webserver": ("3000", "3000"),
    "mlflow": ("5000", "5000"),
    "milvus": ("19530", "19530"),
    "prometheus": ("9090", "9090"),
    "grafana": ("3001", "3000"),
}
RAG_SERVICES = ("code-location", "index-metrics", "serving")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: interpolate(value) for name, value in env.items()}


def published_ports(service: dict) -> list[tuple[str, str]]:
    ports = []
    for port in service.get("ports", []):
        parts = str(port).split(":")
        ports.append((parts[-2], parts[-1].split("/")[0]) if len(parts) >= 2 else (parts[0], parts[0]))
    return ports


def test_compose_has_the_expected_services(compose):
    assert set(compose["services"]) == EXPECTED_SERVICES


def test_every_compose_service_has_image_or_build_healthcheck_and_restart(compose):
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"], f"{name}: no health check"
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: health check test must start with CMD or CMD-SHELL"
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: restart policy"
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == ROOT, f"{name}: build context should be the repository root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        if not build:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), f"{name}: pin the image tag"


def test_compose_ports(compose):
    seen: dict[str, str] = {}
    for name, service in compose["services"].items():
        for host, _container in published_ports(service):
            assert host not in seen, f"host port {host} published by {seen.get(host)} and {name}"
            seen[host] = name
    for name, (host, container) in EXPECTED_PORTS.items():
        assert (host, container) in published_ports(compose["services"][name]), (
            f"{name} must publish {host}:{container}"
        )


def test_compose_depends_on_conditions(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on with conditions (long form)"
        for dependency, spec in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec.get("condition")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{dependency} has no health check to wait for"
    must_wait = {
        "milvus": {"etcd", "minio"},
        "mlflow": {"postgres"},
        "code-location": {"postgres", "milvus", "mlflow"},
        "dagster-webserver": {"postgres", "code-location"},
        "dagster-daemon": {"postgres", "code-location"},
        "serving": {"postgres", "redis", "milvus"},
    }
    for name, dependencies in must_wait.items():
        depends = services[name]["depends_on"]
        for dependency in dependencies:
            assert depends[dependency]["condition"] == "service_healthy", f"{name} must wait for {dependency} healthy"


def test_compose_volumes_exist(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = interpolate(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_compose_env_names_are_settings(compose, monkeypatch):
    known = settings_env_names()
    for name in RAG_SERVICES:
        env = service_env(compose["services"][name])
        unknown = set(env) - known - NON_SETTINGS_ENV - {"DAGSTER_HOME"}
        assert not unknown, f"{name}: env vars not in rag_core.settings: {sorted(unknown)}"
        settings = check_settings_accept({k: v for k, v in env.items() if k in known}, monkeypatch)
        assert settings.milvus_uri == "http://milvus:19530"
        assert settings.redis_url.startswith("redis://redis:6379")
        assert settings.mlflow_tracking_uri == "http://mlflow:5000"
        assert settings.catalog_url.startswith("postgresql://") and "@postgres:5432/" in settings.catalog_url
        assert settings.serving_db_url.startswith("postgresql://") and "@postgres:5432/" in settings.serving_db_url
        assert env["HF_HUB_OFFLINE"] == "1"
    for name in ("code-location", "index-metrics", "dagster-webserver", "dagster-daemon"):
        env = service_env(compose["services"][name])
        assert env["DAGSTER_PG_URL"].startswith("postgresql://") and "@postgres:5432/dagster" in env["DAGSTER_PG_URL"]
        assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"


def test_compose_milvus_standalone_matches_pymilvus(compose):
    milvus = compose["services"]["milvus"]
    assert milvus["image"].startswith("milvusdb/milvus:v")
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    server_major = milvus["image"].split(":v")[1].split(".")[0]
    assert server_major == importlib.metadata.version("pymilvus").split(".")[0], "Milvus and pymilvus majors differ"


def test_compose_mlflow_uses_postgres_and_allows_its_service_name(compose):
    command = " ".join(compose["services"]["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in command and "@postgres:5432/mlflow" in interpolate(command)
    assert "--serve-artifacts" in command
    allowed = re.search(r"--allowed-hosts=(\S+)", command).group(1).split(",")
    assert "mlflow:5000" in allowed, "clients reach MLflow as mlflow:5000; its host-header check must allow it"


def test_compose_postgres_creates_the_databases_the_urls_use(compose):
    init = (DOCKER / "postgres" / "init-databases.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", init)) | {
        compose["services"]["postgres"]["environment"]["POSTGRES_DB"]
    }
    urls = [value for service in compose["services"].values() for value in service_env(service).values()]
    urls += [interpolate(arg) for arg in compose["services"]["mlflow"]["command"]]
    for url in urls:
        for database in re.findall(r"postgresql://[^@\s]+@postgres:5432/(\w+)", url):
            assert database in created, f"database {database} is never created"


# ----------------------------------------------------------------------------------------------------
# Dockerfiles

DOCKERFILES = {
    "serving.Dockerfile": ["rag-serve", "serve", "--host", "0.0.0.0", "--port", "8000"],
    "code-location.Dockerfile": [
        "dagster",
        "code-server",
        "start",
        "-h",
        "0.0.0.0",
        "-p",
        "4000",
        "-m",
        "rag_assets.definitions",
        "--location-name",
        "rag",
    ],
    "dagster.Dockerfile": ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/opt/dagster/workspace.yaml"],
    "mlflow.Dockerfile": [
        "mlflow",
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        "5000",
        "--serve-artifacts",
        "--artifacts-destination",
        "/mlartifacts",
    ],
}
INSTRUCTIONS = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, f"{path.name}: dangling line continuation"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile(name):
    path = DOCKER / name
    instructions = dockerfile_instructions(path)
    keywords = [keyword for keyword, _ in instructions]
    assert set(keywords) <= INSTRUCTIONS, f"{name}: unknown instructions {set(keywords) - INSTRUCTIONS}"
    final = final_stage(instructions)
    final_keywords = [keyword for keyword, _ in final]

    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: the image must run as a non-root user"
    assert "HEALTHCHECK" in final_keywords, f"{name}: no HEALTHCHECK"
    healthcheck = next(arguments for keyword, arguments in final if keyword == "HEALTHCHECK")
    assert " CMD " in f" {healthcheck} ", f"{name}: HEALTHCHECK without CMD"
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    assert re.search(r"\bHF_HUB_OFFLINE=1\b", env), f"{name}: HF_HUB_OFFLINE=1 missing"
    cmd = [arguments for keyword, arguments in final if keyword == "CMD"]
    assert cmd and json.loads(cmd[-1]) == DOCKERFILES[name], f"{name}: unexpected CMD"

    ignored = [
        line.strip()
        for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, arguments in instructions:
        if keyword not in ("COPY", "ADD") or "--from=" in arguments:
            continue
        sources = [part for part in shlex.split(arguments) if not part.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY source {source} does not exist"
            assert not any(source == pattern or source.startswith(pattern.rstrip("/") + "/") for pattern in ignored), (
                f"{name}: COPY source {source} is excluded by {name}.dockerignore"
            )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_pins_match_the_lock(name):
    """Every `package==version` a Dockerfile installs is the version requirements.lock pins."""
    pins = lock_pins(ROOT / "requirements.lock")
    pins.update(lock_pins(DOCKER / "requirements-k8s.txt"))
    run = " ".join(arguments for keyword, arguments in dockerfile_instructions(DOCKER / name) if keyword == "RUN")
    for package, version in re.findall(r"(?<![\w^(|])([A-Za-z][\w.-]*)==([\w.+!-]+)", run):
        if package == "uv":
            continue  # the installer, pinned as in scripts/install.sh
        assert pins.get(normalize(package)) == version, (
            f"{name}: {package}=={version} but the lock pins {pins.get(normalize(package))}"
        )


@pytest.mark.parametrize("name", ["serving.Dockerfile", "code-location.Dockerfile"])
def test_torch_images_install_like_install_sh(name):
    """torch (CPU build) alone first, then the lock without torch and with --no-deps, then the project."""
    run = [arguments for keyword, arguments in dockerfile_instructions(DOCKER / name) if keyword == "RUN"]
    install = next(arguments for arguments in run if "requirements.lock" in arguments)
    torch_at = install.index("torch==2.13.0")
    assert "download.pytorch.org/whl/cpu" in install[:torch_at]
    lock_at = install.index("--no-deps -r /tmp/requirements.txt")
    assert torch_at < lock_at
    assert re.search(r"grep -vE '\^\((torch\|)", install), "the lock install must leave torch out"
    assert any("--no-deps -e ." in arguments for arguments in run), "the project is installed editable with --no-deps"


def test_k8s_extra_requirements_do_not_override_the_lock():
    lock = lock_pins(ROOT / "requirements.lock")
    extra = lock_pins(DOCKER / "requirements-k8s.txt")
    assert "dagster-k8s" in extra
    assert not set(extra) & set(lock), f"already pinned by requirements.lock: {set(extra) & set(lock)}"
    # dagster-k8s follows the dagster-postgres library version of the lock
    assert extra["dagster-k8s"] == lock["dagster-postgres"]


def test_dagster_instance_and_workspace_files_are_valid(compose, monkeypatch):
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.workspace.config_schema import ensure_workspace_config
    from dagster._serdes.config_class import class_from_code_pointer

    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://rag:rag@postgres:5432/dagster")
    config, custom_class = dagster_instance_config(str(DOCKER / "dagster"))
    assert custom_class is None
    assert "postgres" in config["storage"]
    for key in ("run_coordinator", "run_launcher", "compute_logs"):
        cls = class_from_code_pointer(config[key]["module"], config[key]["class"])
        result = validate_config(cls.config_type(), config[key].get("config") or {})
        assert result.success, f"{key}: {result.errors}"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    # the same storage and run queue as the production profile's infra/dagster.yaml
    production = load_yaml(INFRA / "dagster.yaml")
    assert production["storage"] == load_yaml(DOCKER / "dagster" / "dagster.yaml")["storage"]
    if "run_coordinator" in production:
        assert config["run_coordinator"]["config"] == production["run_coordinator"]["config"]

    path = DOCKER / "dagster" / "workspace.yaml"
    workspace = ensure_workspace_config(load_yaml(path), str(path))
    (server,) = [entry["grpc_server"] for entry in workspace["load_from"]]
    location = compose["services"][server["host"]]
    assert location["healthcheck"]["test"][-1] == str(server["port"]), "workspace port != the code server's port"
    assert str(server["port"]) in [str(port) for port in location["expose"]]
    assert server["location_name"] == DOCKERFILES["code-location.Dockerfile"][-1]


# ----------------------------------------------------------------------------------------------------
# Kubernetes manifests


def k8s_manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def k8s_objects() -> list[dict]:
    return [doc for path in k8s_manifest_files() for doc in load_yaml_docs(path)]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)]


@pytest.mark.parametrize("path", k8s_manifest_files(), ids=lambda path: path.name)
def test_k8s_manifest_matches_the_openapi_schema(path):
    import kubernetes_validate

    documents = load_yaml_docs(path)
    assert documents, f"{path.name} is empty"
    for document in documents:
        try:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = ".".join(str(part) for part in error.path)
            pytest.fail(f"{path.name} {document['kind']}/{document['metadata']['name']} at {location}: {error.message}")
        assert document["metadata"].get("namespace") == "rag" or document["kind"] == "Namespace"


def test_kubernetes_validate_rejects_an_invalid_manifest():
    """The validator really validates (strict: unknown fields are errors)."""
    import kubernetes_validate

    deployment = load_yaml_docs(K8S / "serving.yaml")[0]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(path.name for path in k8s_manifest_files())


def test_serving_deployment(k8s_objects):
    (deployment,) = find(k8s_objects, "Deployment", "rag-serving")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == 8000
    assert container["command"] == DOCKERFILES["serving.Dockerfile"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (ports["http"], "http")
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind}"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_serving_service_ingress_hpa_pdb_point_at_the_deployment(k8s_objects):
    (deployment,) = find(k8s_objects, "Deployment", "rag-serving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = find(k8s_objects, "Service", "rag-serving")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert service_ports["http"]["targetPort"] == "http"

    (ingress,) = find(k8s_objects, "Ingress", "rag-serving")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert find(k8s_objects, "Service", backend["name"])
            assert backend["port"].get("name") in service_ports or backend["port"].get("number") in [
                port["port"] for port in service_ports.values()
            ]

    (hpa,) = find(k8s_objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "rag-serving")
    assert deployment["spec"]["replicas"] <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"] or (
        hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    )

    (pdb,) = find(k8s_objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) < hpa["spec"]["minReplicas"]


def test_redis_service_selects_the_statefulset_and_matches_redis_url(k8s_objects):
    (statefulset,) = find(k8s_objects, "StatefulSet", "redis")
    (service,) = find(k8s_objects, "Service", "redis")
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    (config,) = find(k8s_objects, "ConfigMap", "rag-settings")
    assert config["data"]["REDIS_URL"].startswith(f"redis://{service['metadata']['name']}.rag.svc.cluster.local:6379")


def test_k8s_settings_names_and_references(k8s_objects, monkeypatch):
    (config,) = find(k8s_objects, "ConfigMap", "rag-settings")
    (secret,) = find(k8s_objects, "Secret", "rag-secrets")
    known = settings_env_names()
    for source in (config["data"], secret["stringData"]):
        unknown = set(source) - known - NON_SETTINGS_ENV
        assert not unknown, f"not rag_core.settings names: {sorted(unknown)}"
    env = {key: value for key, value in {**config["data"], **secret["stringData"]}.items() if key in known}
    settings = check_settings_accept(env, monkeypatch)
    assert settings.milvus_uri.startswith("http://milvus.")
    assert settings.catalog_url.startswith("postgresql://")

    for workload in find(k8s_objects, "Deployment"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert find(k8s_objects, "ConfigMap", source["configMapRef"]["name"])
                if "secretRef" in source:
                    assert find(k8s_objects, "Secret", source["secretRef"]["name"])


# ----------------------------------------------------------------------------------------------------
# Helm values


def test_dagster_helm_values(k8s_objects):
    values = load_yaml(HELM / "dagster-values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["loadInclusterConfig"] is True

    postgres = values["postgresql"]
    assert postgres["enabled"] is False, "external PostgreSQL"
    assert postgres["postgresqlHost"] and postgres["postgresqlDatabase"] and postgres["postgresqlUsername"]
    assert isinstance(postgres["service"]["port"], int)
    assert values["generatePostgresqlPasswordSecret"] is False
    (password_secret,) = find(k8s_objects, "Secret", values["global"]["postgresqlSecretName"])
    assert "postgresql-password" in password_secret["stringData"]

    user_code = values["dagster-user-deployments"]
    assert user_code["enabled"] is True
    (deployment,) = user_code["deployments"]
    assert deployment["image"]["repository"].endswith("/code-location")
    assert deployment["image"]["tag"] and deployment["image"]["pullPolicy"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "rag_assets.definitions"]
    assert isinstance(deployment["port"], int)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    for section in (deployment, launcher):
        for ref in section["envConfigMaps"]:
            assert find(k8s_objects, "ConfigMap", ref["name"]), ref
        for ref in section["envSecrets"]:
            assert find(k8s_objects, "Secret", ref["name"]), ref
    for volume in deployment["volumes"]:
        assert find(k8s_objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert {mount["name"] for mount in deployment["volumeMounts"]} == {
        volume["name"] for volume in deployment["volumes"]
    }

    # the same run queue as the Docker Compose instance
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    compose_queue = load_yaml(DOCKER / "dagster" / "dagster.yaml")["run_coordinator"]["config"]
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] == compose_queue["max_concurrent_runs"]
    assert (
        coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"] == compose_queue["tag_concurrency_limits"]
    )


def test_milvus_helm_values():
    values = load_yaml(HELM / "milvus-values.yaml")
    assert values["cluster"]["enabled"] is True
    queues = {
        name: values.get(name, {}).get("enabled", False) for name in ("pulsarv3", "pulsar", "kafka", "woodpecker")
    }
    assert sum(queues.values()) == 1, f"exactly one message queue: {queues}"
    assert queues["pulsarv3"] or queues["pulsar"] or queues["kafka"]
    assert values["queryNode"]["replicas"] >= 2
    assert {"cpu", "memory"} <= set(values["queryNode"]["resources"]["requests"])
    assert values["proxy"]["replicas"] >= 2
    assert values["etcd"]["replicaCount"] >= 3 and values["etcd"]["replicaCount"] % 2 == 1
    assert values["minio"]["enabled"] is True and values["minio"]["mode"] == "distributed"
    tag = values["image"]["all"]["tag"]
    assert tag.split(".")[0] == "v" + importlib.metadata.version("pymilvus").split(".")[0]


# ----------------------------------------------------------------------------------------------------
# Prometheus and Grafana

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def exported_metrics() -> dict[str, set[str]]:
    """Exposed series name -> label names, of rag_serving/metrics.py and the platform list."""
    from rag_serving.metrics import Metrics

    metrics = Metrics()
    series: dict[str, set[str]] = {}
    for attribute in vars(metrics).values():
        if not hasattr(attribute, "_labelnames"):
            continue
        labels = set(attribute._labelnames)
        name, kind = attribute._name, attribute._type
        if kind == "counter":
            series.update({f"{name}_total": labels, f"{name}_created": labels})
        elif kind == "histogram":
            series.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            series[name] = labels
    for name, labels in PLATFORM_METRICS.items():
        series[name] = series.get(name, set()) | labels
    for name in PROMETHEUS_BUILTIN_METRICS:
        series[name] = set()
    return series


def promql_metrics(expr: str) -> tuple[set[str], list[tuple[str, set[str]]], set[str]]:
    """(metric names, [(metric, matcher label names)], grouping label names) of a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    selectors = [
        (name, set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body)))
        for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr)
    ]
    grouping = set()
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouping.update(label.strip() for label in body.split(",") if label.strip())
    stripped = re.sub(r"\{[^}]*\}", " ", expr)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", stripped)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", stripped):
        if match.group(2) or match.group(1) in PROMQL_KEYWORDS:
            continue
        names.add(match.group(1))
    return names, selectors, grouping


def check_expression(expr: str, where: str) -> set[str]:
    series = exported_metrics()
    names, selectors, grouping = promql_metrics(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - set(series)
    assert not unknown, f"{where}: metrics not exported by the serving API: {sorted(unknown)}"
    for name, labels in selectors:
        bad = labels - series[name] - TARGET_LABELS
        assert not bad, f"{where}: {name} has no label(s) {sorted(bad)} (it has {sorted(series[name])})"
    known_labels = set(TARGET_LABELS) | {"pod"}
    for name in names:
        known_labels |= series[name]
    assert grouping <= known_labels, f"{where}: grouping by unknown labels {sorted(grouping - known_labels)}"
    return names


def test_promql_parser_sees_through_functions_and_matchers():
    names, selectors, grouping = promql_metrics(
        'histogram_quantile(0.99, sum by (le, route) (rate(rag_request_seconds_bucket{route!~"/health|x"}[5m]))) > 1e-3'
    )
    assert names == {"rag_request_seconds_bucket"}
    assert selectors == [("rag_request_seconds_bucket", {"route"})]
    assert grouping == {"le", "route"}
    with pytest.raises(AssertionError, match="no label"):
        check_expression('sum(rate(rag_requests_total{status_code="500"}[5m]))', "probe")
    with pytest.raises(AssertionError, match="not exported"):
        check_expression("rate(rag_request_total[5m])", "probe")


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_alert_rules_structure_and_metric_names():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    used: set[str] = set()
    for rule in rules:
        assert {"alert", "expr", "for", "labels"} <= set(rule), f"{rule.get('alert')}: missing keys"
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), f"{rule['alert']}: bad duration {rule['for']}"
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule.get("annotations", {}).get("summary"), f"{rule['alert']}: no summary"
        used |= check_expression(rule["expr"], rule["alert"])
    expressions = {rule["alert"]: rule["expr"] for rule in rules}
    joined = " ".join(expressions.values())
    # the five required alerts: 5xx ratio, p99 latency, index staleness, eval regression, Dagster failures
    assert re.search(r'rag_requests_total\{status=~"5\.\."\}', joined)
    assert re.search(r"histogram_quantile\(0\.99,[^;]*rag_request_seconds_bucket", joined)
    assert re.search(r"time\(\) - max\(rag_index_last_success_timestamp_seconds\)", joined)
    assert "rag_eval_ndcg_at_10" in joined and "max_over_time(rag_eval_ndcg_at_10" in joined
    assert "rag_dagster_failed_runs_total" in joined


def test_prometheus_config_scrapes_the_serving_api(compose):
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    serving = jobs["rag-serving"]
    assert serving.get("metrics_path", "/metrics") == "/metrics"
    for job in jobs.values():
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.split(":")
                if host == "localhost":
                    continue
                service = compose["services"][host]
                exposed = {str(p) for p in service.get("expose", [])} | {c for _, c in published_ports(service)}
                assert port in exposed, f"{job['job_name']}: {host} does not listen on {port}"
    assert "alerts.yml" in config["rule_files"]
    mounted = [v for v in compose["services"]["prometheus"]["volumes"] if v.startswith("./prometheus:")]
    assert mounted and mounted[0].split(":")[1] == "/etc/prometheus"


def promtool() -> str | None:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package `prometheus`): `apt-get install prometheus`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_promtool_check_config():
    result = subprocess.run(
        [promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules():
    result = subprocess.run(
        [promtool(), "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_alert_unit_tests():
    """The alerts fire on synthetic series (and stay quiet on healthy ones): infra/prometheus/alerts.test.yml."""
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning(compose):
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "rag.yml")["providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")}
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounts, f"dashboard path {path} is not mounted"
        assert list((COMPOSE.parent / mounts[path]).glob("*.json")), "no dashboard JSON to provision"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


def dashboard_panels(panels: list[dict]) -> list[dict]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(dashboard_panels(panel.get("panels", [])))
    return flat


def test_grafana_dashboard_uses_only_exported_metrics():
    datasource_uid = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]["uid"]
    for path in (GRAFANA / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        panels = dashboard_panels(dashboard["panels"])
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        used: set[str] = set()
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
            assert panel["datasource"]["uid"] == datasource_uid
            for target in panel["targets"]:
                used |= check_expression(target["expr"], f"{path.name}: {panel['title']}")
        # request rate, latency per stage, cache hit rate, index size, eval metrics
        for required in (
            "rag_requests_total",
            "rag_request_seconds_bucket",
            "rag_stage_seconds_bucket",
            "rag_cache_requests_total",
            "rag_index_rows",
            "rag_eval_ndcg_at_10",
            "rag_index_last_success_timestamp_seconds",
        ):
            assert required in used, f"{path.name}: no panel shows {required}"
