"""The production Dagster instance config: metadata really lands in Postgres (pgserver), and the
Kubernetes run launcher accepts its configuration."""

import dagster as dg
import pytest
import yaml

from mlp_platform.settings import PROJECT_ROOT

PROD_YAML = PROJECT_ROOT / "deploy" / "production" / "dagster.yaml"


@pytest.fixture
def postgres(tmp_path):
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    server.psql("create database dagster;")
    yield server
    server.cleanup()


def test_production_instance_stores_runs_in_postgres(postgres, tmp_path, monkeypatch):
    socket_dir = postgres.get_uri().split("host=")[1]  # pgserver listens on a unix socket only
    monkeypatch.setenv("DAGSTER_PG_HOST", "localhost")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    monkeypatch.setenv("DAGSTER_PG_DB", "dagster")
    monkeypatch.setenv("DAGSTER_PG_USER", "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")
    config = yaml.safe_load(PROD_YAML.read_text())
    config.pop("run_launcher")  # no cluster here; the launcher is checked separately below
    config["storage"]["postgres"]["postgres_db"]["params"] = {"host": socket_dir}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))

    @dg.asset
    def heartbeat() -> int:
        return 1

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize([heartbeat], instance=instance)
        assert result.success
    finally:
        instance.dispose()
    out = postgres.psql("\\c dagster\nselect run_id from runs;")
    assert result.run_id in out


def test_kubernetes_run_launcher_accepts_the_config(tmp_path, monkeypatch):
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))
    launcher_config = yaml.safe_load(PROD_YAML.read_text())["run_launcher"]
    assert launcher_config["module"] == "dagster_k8s" and launcher_config["class"] == "K8sRunLauncher"
    cfg = dict(launcher_config["config"], job_namespace="mlp", load_incluster_config=False, dagster_home="/opt/dagster",
               kubeconfig_file=str(kubeconfig))
    launcher = K8sRunLauncher(**cfg)
    assert launcher.job_namespace == "mlp"
    assert launcher.env_secrets == ["mlp-platform-secrets"]
    assert launcher.env_config_maps == ["mlp-platform-env"]
