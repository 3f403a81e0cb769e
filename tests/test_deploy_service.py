"""The scoring service's container and Kubernetes manifests (deploy/service/), checked without a Docker
engine or a cluster: the manifests parse and agree with each other (labels, ports, names), every probe
path answers on the real app, every environment variable they set is one the service reads, and the
Dockerfile's command names an importable app factory."""

import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from mlp_platform.settings import PROJECT_ROOT, load_settings
from tests.servinglib import config_from_env

SERVICE_DIR = PROJECT_ROOT / "deploy" / "service"
K8S = SERVICE_DIR / "k8s"


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (SERVICE_DIR / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            logical.append((keyword.upper(), rest.strip()))
        current = ""
    return logical


def container(docs: dict) -> dict:
    (scoring,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return scoring


def test_manifests_parse_and_reference_each_other():
    docs = manifests()
    assert set(docs) >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Kustomization"}
    deployment = docs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert 1 <= docs["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"] <= hpa["maxReplicas"]
    assert sorted(docs["Kustomization"]["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                                if p.name != "kustomization.yaml")
    # ports: the Service and every probe target the container's named port
    scoring = container(docs)
    ports = {p["name"]: p["containerPort"] for p in scoring["ports"]}
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] in ports
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert scoring[probe]["httpGet"]["port"] in ports
    assert scoring["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert scoring["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert str(ports["http"]) == deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
    # resources set, non-root, read-only root filesystem (writes go to the mounted volumes)
    assert scoring["resources"]["requests"]["cpu"] and scoring["resources"]["limits"]["memory"]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    assert scoring["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in scoring["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in scoring["env"]}
    assert env["MLP_DATA_DIR"] in mounts and "/tmp" in mounts
    assert Path(env["MLP_FAST_SCORER_CACHE"]).parent.as_posix() in mounts
    assert env["MLP_DECISION_LOG_DIR"].endswith("$(POD_NAME)")  # one writer per decision log


def test_the_dockerfile_agrees_with_the_manifests_and_its_factory_imports():
    instructions = dockerfile_instructions()
    stages = [args for kw, args in instructions if kw == "FROM"]
    assert len(stages) >= 2  # multi-stage: the runtime stage does not carry the build tools
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for kw, a in instructions if kw == "ARG" and "=" in a}
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    runs = " ".join(a for kw, a in instructions if kw == "RUN")
    assert "uv sync --frozen --no-dev" in runs  # installed from uv.lock exactly
    (user,) = [a for kw, a in instructions if kw == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (cmd,) = [json.loads(a) for kw, a in instructions if kw == "CMD"]
    factory = cmd[cmd.index("--factory") + 1]
    port = int(cmd[cmd.index("--port") + 1])
    (healthcheck,) = [a for kw, a in instructions if kw == "HEALTHCHECK"]
    assert f"127.0.0.1:{port}/healthz" in healthcheck
    (exposed,) = [int(a) for kw, a in instructions if kw == "EXPOSE"]
    assert exposed == port == {p["name"]: p["containerPort"] for p in container(manifests())["ports"]}["http"]
    module_name, attr = factory.split(":")
    assert callable(getattr(importlib.import_module(module_name), attr))
    assert module_name == "mlp_platform.serving.app" and attr == "app_from_env"
    # the build context filter keeps what `uv sync` and the wheel build need
    ignore = (SERVICE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "uv.lock", "README.md", "mlp_platform/**"):
        assert f"!{needed}" in ignore
    copied = " ".join(a for kw, a in instructions if kw == "COPY")
    for needed in ("pyproject.toml", "uv.lock", "README.md", "mlp_platform", "deciders"):
        assert needed in copied and (PROJECT_ROOT / needed).exists()
    assert "!deciders/**" in ignore
    # the runtime stage's layout: the declarations and the spec at the relative path they name
    env = dict(a.split("=", 1) for kw, args in instructions if kw == "ENV" for a in args.split() if "=" in a)
    placed = {dst: src for kw, args in instructions if kw == "COPY" and "--from" not in args
              for src, dst in [args.split()[-2:]]}
    deciders_dir = Path(env["MLP_DECIDERS_DIR"])
    assert placed[deciders_dir.as_posix()] == "deciders"
    for path in sorted((PROJECT_ROOT / "deciders").glob("*.yaml")):
        relative = yaml.safe_load(path.read_text())["feature_spec"]
        in_image = os.path.normpath(deciders_dir / relative)
        # placed by a COPY of that very file, or inside a directory the image copies whole
        owner = in_image if in_image in placed else next(
            (d for d in placed if in_image.startswith(d.rstrip("/") + "/")), None)
        assert owner is not None, f"{path.name}: its spec {relative} is not at {in_image} in the image"
        source = PROJECT_ROOT / placed[owner] / os.path.relpath(in_image, owner)
        assert source.resolve() == (path.parent / relative).resolve() and source.exists()


class _RecordingEnviron(dict):
    """os.environ stand-in that records every variable name read."""

    def __init__(self, base):
        super().__init__(base)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def test_every_environment_variable_of_the_deployment_is_read_by_the_service(tmp_path, monkeypatch):
    from mlp_platform.runtime.fast_scorer import default_cache_dir
    from mlp_platform.serving.tracing import tracer_from_env

    scoring = container(manifests())
    env = {e["name"]: e.get("value") for e in scoring["env"]}
    resolved = {k: (v or "from-secret").replace("/var/lib/mlp", str(tmp_path)).replace("$(POD_NAME)", "pod-0")
                for k, v in env.items()}
    resolved["MLP_ID_HASH_KEY"] = "k" * 32
    recorder = _RecordingEnviron({**os.environ, **resolved})
    monkeypatch.setattr(os, "environ", recorder)
    settings = load_settings()
    config = config_from_env(settings)
    assert tracer_from_env(os.environ) is None  # MLP_TRACING=off
    assert default_cache_dir() == Path(env["MLP_FAST_SCORER_CACHE"])  # the compiled-trees cache
    read = recorder.read | {"MLP_SERVING_FAST_PATH"}  # read by app_from_env
    for name in env:
        if name == "POD_NAME" or name.startswith("OTEL_"):  # downward API / OpenTelemetry's own variables
            continue
        assert name in read, f"{name} is set by the Deployment but never read by the service"
    assert config.decision_log_dir == tmp_path / "decisions" / "pod-0"
    assert config.api_keys == ("from-secret",) and config.id_hash_key == b"k" * 32
    assert settings.mlflow_uri == "from-secret"
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in scoring["env"] if "valueFrom" in e
                   and "secretKeyRef" in e["valueFrom"]}
    assert secret_keys >= {"MLP_API_KEYS", "MLP_ADMIN_KEYS", "MLP_ID_HASH_KEY"}


@pytest.fixture
def app_without_models(tmp_path):
    """The real app over a service with no model registered yet (what a pod sees before the first
    promotion): health answers, readiness does not."""
    from mlp_platform.serving.app import create_app
    from mlp_platform.serving.decision_log import DecisionLog
    from mlp_platform.serving.metrics import ServiceMetrics
    from mlp_platform.serving.routing import RoutingFile
    from mlp_platform.serving.service import ModelPool, ScoringService, ServingConfig
    from mlp_platform.serving.store_url import store_from_url

    config = ServingConfig(feature_store_url="memory://", decision_log_dir=tmp_path / "d",
                           routing_path=tmp_path / "routing.json", api_keys=("k",), admin_keys=(),
                           id_hash_key=b"k" * 32, reload_interval_s=3600)
    metrics = ServiceMetrics()

    def no_registry(version):
        raise LookupError(version)

    service = ScoringService(config, store_from_url("memory://"), DecisionLog(config.decision_log_dir),
                             ModelPool(no_registry, RoutingFile(config.routing_path), metrics), metrics)
    return create_app(service)


def test_probe_paths_answer_on_the_real_app(app_without_models):
    scoring = container(manifests())
    fastapi_app = app_without_models.app.app  # ScoringFastPath -> BodyLimit -> FastAPI
    paths = {route.path for route in fastapi_app.routes}
    with TestClient(app_without_models) as client:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = scoring[probe]["httpGet"]["path"]
            assert path in paths
        assert client.get(scoring["livenessProbe"]["httpGet"]["path"]).status_code == 200
        ready = client.get(scoring["readinessProbe"]["httpGet"]["path"])
        assert ready.status_code == 503 and ready.json()["ready"] is False  # no champion: no traffic
        annotations = manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        assert client.get(annotations["prometheus.io/path"]).status_code == 200
