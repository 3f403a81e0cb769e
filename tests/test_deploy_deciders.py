"""Per-decider deployments (deploy/deciders/): one Deployment, Service, HPA and PDB per declared
decider, rendered from one template, checked in, in sync with the declarations, valid against the
Kubernetes schemas (kubernetes-validate, offline), each selecting only its own decider's pods,
hosting only its decider and reading only its own Secret."""

from __future__ import annotations

import shutil

import kubernetes_validate
import pytest
import yaml

from mlp_platform.deciders.declaration import DeciderError, load_decider, load_deciders, write_variant
from mlp_platform.serving.deciders import hosted_deciders, serves_fraud
from mlp_platform.serving.manifests import app_name, rendered_manifests, stale_manifests, write_manifests
from mlp_platform.settings import PROJECT_ROOT

DECIDERS = PROJECT_ROOT / "deciders"
TARGET = PROJECT_ROOT / "deploy" / "deciders"
K8S_VERSION = "1.31"


def docs_of(text: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def test_the_checked_in_manifests_are_what_the_declarations_and_the_template_render():
    # a hand edit of a rendered file, or a declaration changed without `mlp deciders manifests`, fails here
    assert stale_manifests(DECIDERS, TARGET) == []
    kustomization = yaml.safe_load((TARGET / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f"{n}.yaml" for n in load_deciders(DECIDERS))


@pytest.mark.parametrize("name", sorted(load_deciders(DECIDERS)))
def test_each_deciders_objects_are_valid_and_select_only_its_pods(name):
    docs = docs_of((TARGET / f"{name}.yaml").read_text())
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    app = app_name(name)
    deployment = docs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["mlp-platform/decider"] == name and pod_labels["app.kubernetes.io/name"] == app
    for selector in (deployment["spec"]["selector"]["matchLabels"], docs["Service"]["spec"]["selector"],
                     docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector == {"app.kubernetes.io/name": app}
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": app}
    declared = load_decider(DECIDERS, name).deployment
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (declared.min_replicas, declared.max_replicas)
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLP_SERVE_DECIDERS"]["value"] == name
    # the process this env starts hosts exactly this decider
    hosted = [d.name for d in hosted_deciders(DECIDERS, name)] + (["fraud"] if serves_fraud(name) else [])
    assert hosted == [name]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "valueFrom" in e
               and "secretKeyRef" in e["valueFrom"]}
    assert secrets == {f"mlp-{name.replace('_', '-')}-secrets"}
    for key in ("MLP_API_KEYS", "MLP_DECIDER_API_KEYS", "MLP_ADMIN_KEYS", "MLFLOW_TRACKING_URI", "MLP_ID_HASH_KEY"):
        assert "value" not in env.get(key, {}), f"{key} must come from the Secret, never a literal"
    assert ("MLP_DECIDER_API_KEYS" in env) == (name != "fraud")
    assert env["MLP_DECISION_LOG_DIR"]["value"].endswith("$(POD_NAME)")  # one writer per decision log


def test_no_service_selects_another_deciders_pods():
    pods = {name: docs_of((TARGET / f"{name}.yaml").read_text())["Deployment"]["spec"]["template"]["metadata"]["labels"]
            for name in load_deciders(DECIDERS)}
    for name in pods:
        selector = docs_of((TARGET / f"{name}.yaml").read_text())["Service"]["spec"]["selector"]
        matched = [other for other, labels in pods.items() if selector.items() <= labels.items()]
        assert matched == [name]


def test_a_decider_added_as_a_file_gets_its_own_deployment(tmp_path):
    directory, target = tmp_path / "deciders", tmp_path / "deploy"
    target.mkdir()
    shutil.copy(TARGET / "decider.yaml.j2", target)
    for name in ("fraud", "credit"):
        write_variant(load_decider(DECIDERS, name), directory, {})
    doc = yaml.safe_load((directory / "credit.yaml").read_text())
    doc["name"], doc["model"]["registered_name"] = "small_loans", "small-loans"
    doc["deployment"] = {"min_replicas": 3, "max_replicas": 30, "cpu_target": 50, "memory_limit": "3Gi"}
    (directory / "small_loans.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert stale_manifests(directory, target) == ["credit.yaml", "fraud.yaml", "kustomization.yaml",
                                                  "small_loans.yaml"]
    write_manifests(directory, target)
    assert stale_manifests(directory, target) == []
    docs = docs_of((target / "small_loans.yaml").read_text())
    for d in docs.values():
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert docs["Deployment"]["metadata"]["name"] == "mlp-decider-small-loans"
    assert docs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 30
    assert docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "3Gi"
    # a declaration removed: its manifest goes too
    (directory / "small_loans.yaml").unlink()
    write_manifests(directory, target)
    assert not (target / "small_loans.yaml").exists()
    assert "small_loans.yaml" not in rendered_manifests(directory, target)


def test_a_deployment_section_that_cannot_work_is_refused(tmp_path):
    directory = tmp_path / "deciders"
    write_variant(load_decider(DECIDERS, "credit"), directory, {})
    doc = yaml.safe_load((directory / "credit.yaml").read_text())
    doc["deployment"] = {"min_replicas": 1, "min_available": 1}  # a PDB that blocks every drain
    (directory / "credit.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(DeciderError, match="min_available"):
        load_decider(directory, "credit")
