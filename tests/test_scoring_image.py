"""The scoring image's contents, as far as this machine allows (no Docker engine runs here): what the
Dockerfile's build stage copies is installed the way it installs it (``uv sync --frozen --no-dev
--no-editable`` into a clean virtualenv), the runtime stage's files are laid out beside it, and the
image's command (uvicorn with the factory), run from that virtualenv outside the repository with
the image's environment, serves a registered champion: /readyz answers 200 and a score is
decided. A file the service needs but the Dockerfile does not copy, or a dependency only the dev
environment has, makes the process fail to start here."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mlp_platform.serving.routing import RoutingFile, RoutingState
from mlp_platform.settings import PROJECT_ROOT, load_settings

pytestmark = pytest.mark.slow
DEPLOY = PROJECT_ROOT / "deploy"
DOCKERFILE = PROJECT_ROOT / "deploy" / "service" / "Dockerfile"
KEY = "image-key-123"


def stages(text: str) -> dict[str, list[str]]:
    """The Dockerfile's instructions (continuation lines joined) by stage name."""
    current = ""
    out: dict[str, list[str]] = {current: []}  # the ARGs before the first FROM
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM \S+(?: AS (\S+))?", line, re.I)
        if match:
            current = match.group(1) or ""
            out[current] = []
        else:
            out[current].append(line)
    return out


def copies(instructions: list[str]) -> list[tuple[str, str]]:
    """(sources..., destination) of the stage's COPY instructions from the build context."""
    found = []
    for line in instructions:
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, dest = line.split()[1:]
            found += [(s, dest) for s in sources]
    return found


def image_env(instructions: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in instructions:
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line[4:])))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uv_command() -> list[str]:
    """uv as `make setup` installed it: on PATH, or as a module of the interpreter that made .venv."""
    if shutil.which("uv"):
        return [shutil.which("uv")]
    for python in (os.environ.get("PYTHON"), "python3", "python"):
        found = python and shutil.which(python)
        if found and subprocess.run([found, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [found, "-m", "uv"]
    raise RuntimeError("uv is not installed (make setup installs it)")


def build_image_venv(tmp: Path) -> tuple[Path, Path]:
    """(virtualenv, /opt/mlp equivalent) built as the Dockerfile builds them."""
    parts = stages(DOCKERFILE.read_text())
    src, venv, opt = tmp / "src", tmp / "venv", tmp / "opt"
    src.mkdir()
    for source, _ in copies(parts["build"]):
        path = PROJECT_ROOT / source
        if path.is_dir():
            shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / source)
    # the build stage's uv settings (bytecode compiled at install, as the image ships it), with this
    # machine's paths
    env = {**os.environ, **image_env(parts["build"]), "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([*uv_command(), "sync", "--frozen", "--no-dev", "--no-editable", "--quiet"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for source, dest in copies(parts["runtime"]):  # the runtime stage's files, at their place under /opt/mlp
        target = opt / Path(dest).relative_to("/opt/mlp")
        path = PROJECT_ROOT / source
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return venv, opt


def test_the_scoring_images_contents_serve_a_champion(tmp_path, monkeypatch):
    from tests.test_serving_api import register, txn

    venv, opt = build_image_venv(tmp_path)
    python = venv / "bin" / "python"
    # the image's library is the installed one, not this checkout, and it has no dev dependencies
    where = subprocess.run([str(python), "-c", "import mlp_platform, importlib.util as u; print(mlp_platform.__file__);"
                            "print(u.find_spec('pytest') is None)"], cwd=tmp_path, capture_output=True, text=True)
    lines = where.stdout.split()
    assert lines[0].startswith(str(venv)) and lines[1] == "True", where.stderr

    data = tmp_path / "var" / "lib" / "mlp"
    monkeypatch.setenv("MLP_DATA_DIR", str(data))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    version = register(settings, 1)
    RoutingFile(settings.routing_path).write(RoutingState(champion=version, updated_by="test"))

    runtime = stages(DOCKERFILE.read_text())["runtime"]
    env = image_env(runtime)
    cmd = json.loads(next(line for line in runtime if line.startswith("CMD "))[4:])
    assert cmd[:3] == ["uvicorn", "--factory", "mlp_platform.serving.app:app_from_env"]
    port = free_port()
    cmd = [str(venv / "bin" / "uvicorn"), *cmd[1:]]
    cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(port)
    env.update({
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
        "MLP_DATA_DIR": str(data), "MLP_DECIDERS_DIR": str(opt / "deciders"),
        "MLP_FAST_SCORER_CACHE": str(tmp_path / "var" / "cache" / "fast_scorer"),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "MLP_API_KEYS": KEY,
        "MLP_FEATURE_STORE_URL": f"embedded://{tmp_path / 'store'}",
        "MLP_DECISION_LOG_DIR": str(data / "decisions" / "pod-0"),
        # production requires the review database (the fraud decider opens review cases); here a file
        "MLP_REVIEW_DATABASE_URL": f"sqlite:///{tmp_path / 'review' / 'cases.db'}",
    })
    assert env["MLP_ENV"] == "production"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = None
        while time.monotonic() < started + 120:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.status_code == 200, log_path.read_text()[-3000:]
        assert ready.json()["champion"] == version
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat()
        answer = httpx.post(f"{base}/v1/score", json=txn(1, event_time=now), headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == version, answer.text
        shipped = ship_with_the_sidecar_command(venv, env, tmp_path)
        assert [json.loads(m)["decision_id"] for m in shipped] == [answer.json()["decision_id"]]
    finally:
        server.terminate()
        server.wait(timeout=30)


def ship_with_the_sidecar_command(venv: Path, env: dict, tmp_path: Path) -> list[bytes]:
    """Run the Deployment's decision-shipper command with the image's installed `mlp` against a real
    NATS server until the stream holds the pod's records; the messages on the stream."""
    import asyncio

    import yaml

    from mlp_platform.streaming.decision_stream import StreamConfig, read_stream
    from tests.natslib import NatsServer

    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "deciders" / "fraud.yaml").read_text())
                      if d["kind"] == "Deployment")
    sidecar = next(c for c in deployment["spec"]["template"]["spec"]["initContainers"]
                   if c["name"] == "decision-shipper")
    command = [str(venv / "bin" / sidecar["command"][0]), *sidecar["command"][1:]]
    command[command.index("--metrics-port") + 1] = str(free_port())
    with NatsServer(tmp_path / "jetstream") as nats:
        config = StreamConfig(url=nats.url, stream="IMAGE")
        ship_env = {**env, "MLP_DECISION_STREAM_URL": nats.url, "MLP_DECISION_STREAM": "IMAGE"}
        shipper = subprocess.Popen(command, cwd=tmp_path, env=ship_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            messages: list = []
            while time.monotonic() < deadline and not messages:
                assert shipper.poll() is None, shipper.stdout.read().decode()[-3000:]
                with contextlib.suppress(Exception):
                    messages = asyncio.run(read_stream(config, 0))[0]
                time.sleep(0.2)
        finally:
            shipper.terminate()
            out = shipper.communicate(timeout=30)[0].decode()
        assert shipper.returncode == 0 and "shipped 1 records" in out, out[-3000:]
        return [m.data for m in messages]
