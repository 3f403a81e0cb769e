"""The scoring service's registry reader over a real MLflow tracking server (``mlflow server``, a
process on loopback, artefacts through its proxy as deploy/platform/mlflow.yaml runs it): it reads
what the MLflow client reads, without importing MLflow; bad servers and listings fail clearly."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mlp_platform.deciders.declaration import load_decider
from mlp_platform.local_stack import _http_ok, _wait, free_port
from mlp_platform.registry.mlflow_registry import REFERENCE_PROFILE, ModelRegistry
from mlp_platform.registry.tracking_server import (
    RegistryReadError,
    TrackingServerRegistry,
    read_only_registry,
)
from mlp_platform.settings import TrackingServerAuth, load_settings
from tests.test_serving_api import register


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracking")
    port = free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                             f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", (tmp / "artefacts").as_uri(),
                             "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http_ok(f"{url}/health"), "the MLflow tracking server", proc, 180, tmp / "server.log")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLP_DATA_DIR", str(tmp / "data"))
            mp.setenv("MLFLOW_TRACKING_URI", url)
            settings = load_settings()
            version = register(settings, 1)
            writer = ModelRegistry.from_settings(settings)
            writer.set_alias("champion", version)
            yield {"url": url, "settings": settings, "version": version, "writer": writer, "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_it_reads_what_the_mlflow_client_reads(server):
    writer: ModelRegistry = server["writer"]
    reader = read_only_registry(server["settings"], load_decider(server["settings"].deciders_dir))
    assert isinstance(reader, TrackingServerRegistry)
    version = server["version"]
    assert reader.alias("champion") == writer.alias("champion") == version
    assert reader.alias("challenger") is None
    assert reader.ref(version) == writer.ref(version)
    assert reader.version_tags(version) == writer.version_tags(version)
    assert "operating_threshold" in reader.version_tags(version)
    ours, theirs = reader.model_dir(version), writer.model_dir(version)
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    assert files and sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file()) == files
    assert all((ours / f).read_bytes() == (theirs / f).read_bytes() for f in files)
    run_id = writer.ref(version).run_id
    assert reader.load_text(run_id, REFERENCE_PROFILE) == writer.load_text(run_id, REFERENCE_PROFILE)
    assert reader.load_text(run_id, "no_such_artefact.json") is None
    assert TrackingServerRegistry(server["url"], "no-such-model").alias("champion") is None


def test_the_service_loads_its_champion_without_importing_mlflow(server):
    """Reverted to the MLflow client (ModelRegistry in registry_loader), 'mlflow' is in sys.modules
    (and the start takes 1.4 s longer in the scoring image: bench/bench_startup.py)."""
    code = (
        "import sys\n"
        "from mlp_platform.settings import load_settings\n"
        "from mlp_platform.runtime.loading import registry_loader\n"
        f"loaded = registry_loader(load_settings(), batch_kernel='rows')({server['version']!r})\n"
        "assert loaded.scorer.backend == 'compiled', loaded.scorer.info\n"
        "assert loaded.populations and loaded.operating_threshold == 0.3\n"
        "heavy = {'mlflow', 'lightgbm', 'sklearn', 'pandas'} & {m.split('.')[0] for m in sys.modules}\n"
        "assert not heavy, heavy\n")
    env = {"PATH": "/usr/bin:/bin", "MLP_DATA_DIR": str(server["tmp"] / "data"), "MLFLOW_TRACKING_URI": server["url"],
           "MLP_FAST_SCORER_CACHE": str(server["tmp"] / "cache"), "HOME": str(server["tmp"])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A tracking server that lists an artefact named '../escape' and records request headers."""

    headers_seen: list[dict[str, str]] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).headers_seen.append(dict(self.headers))
        if "get-download-uri" in self.path:
            body = {"artifact_uri": "mlflow-artifacts:/0/models/m-1/artifacts"}
        elif self.path.startswith("/api/2.0/mlflow-artifacts/artifacts?"):
            body = {"files": [{"path": "../escape", "is_dir": False}]}
        else:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "the store is down"}')
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


def test_hostile_or_failing_servers_are_refused_clearly(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        reader = TrackingServerRegistry(url, "fraud-detector", TrackingServerAuth(token="s3cret"))
        with pytest.raises(RegistryReadError, match="unsafe artefact name '../escape'"):
            reader.model_dir("1")
        assert not (tmp_path.parent / "escape").exists()
        with pytest.raises(RegistryReadError, match="500 INTERNAL_ERROR the store is down"):
            reader.alias("champion")
        assert all(h.get("Authorization") == "Bearer s3cret" for h in _Hostile.headers_seen)
        basic = TrackingServerRegistry(url, "m", TrackingServerAuth(username="ann", password="pw"))
        with pytest.raises(RegistryReadError):
            basic.alias("champion")
        assert _Hostile.headers_seen[-1]["Authorization"] == "Basic YW5uOnB3"
    finally:
        httpd.shutdown()
        httpd.server_close()
    with pytest.raises(RegistryReadError, match="Connection refused|refused"):
        TrackingServerRegistry(url, "m", timeout_s=2).alias("champion")
    with pytest.raises(ValueError, match="not an http"):
        TrackingServerRegistry("sqlite:///x.db", "m")
