"""Benchmark: the scoring process's start-up, from process start to /readyz 200 (issue 20: "ready in
under 3 s with the model compiled, excluding the image pull").

Not a test: it builds the scoring image's contents the way deploy/service/Dockerfile does (a clean
virtualenv from ``uv sync --frozen --no-dev --no-editable``, see tests/test_scoring_image.py), starts
an MLflow tracking server (``mlflow server``, SQLite backend, artefacts through its proxy as
deploy/platform/mlflow.yaml runs it), registers the serving benchmark's model (300 trees, 31 leaves,
32 features) there, then starts the image's command from that virtualenv, outside the repository,
with the image's environment, ``--rounds`` times in each of two conditions, interleaved:

* **cold**: an empty fast-scorer cache: the champion's trees are compiled to C at load (a new pod);
* **warm**: the cache kept from the previous start (a restarted container on the same volume).

Medians (min-max) of the wall time from ``Popen`` to the first 200 of /readyz (polled every 20 ms).

Paired in the same rounds, the load of the champion alone in a fresh interpreter of the image's
virtualenv (warm cache), to exit: **ours** (``registry_loader``: the tracking server's REST API and
LightGBM's C library, no ``mlflow`` / ``lightgbm`` package import) against **the MLflow client**
(``ModelRegistry`` and ``lightgbm.Booster``, the same FastScorer): the weight of the two hand-written
readers.

    .venv/bin/python bench/bench_startup.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from bench_serving import http_get, machine, register_models  # noqa: E402

from tests.test_scoring_image import DOCKERFILE, build_image_venv, free_port, image_env, stages  # noqa: E402


def start_once(venv: Path, env: dict[str, str], cwd: Path, timeout: float = 120.0) -> float:
    runtime = stages(DOCKERFILE.read_text())["runtime"]
    cmd = json.loads(next(line for line in runtime if line.startswith("CMD "))[4:])
    port = free_port()
    cmd = [str(venv / "bin" / "uvicorn"), *cmd[1:]]
    cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(port)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode}")
            try:
                status, _ = http_get(port, "/readyz", timeout=1.0)
                if status == 200:
                    return time.perf_counter() - started
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"not ready after {timeout} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


_LOADERS = {
    "load_ours": (
        "from mlp_platform.settings import load_settings\n"
        "from mlp_platform.runtime.loading import registry_loader\n"
        "loaded = registry_loader(load_settings(), batch_kernel='rows')({version!r})\n"),
    "load_mlflow_client": (
        "from mlp_platform.settings import load_settings\n"
        "from mlp_platform.deciders.declaration import load_decider\n"
        "from mlp_platform.registry.mlflow_registry import REFERENCE_PROFILE, ModelRegistry\n"
        "from mlp_platform.runtime.scorer import Scorer\n"
        "from mlp_platform.runtime.fast_scorer import FastScorer\n"
        "settings = load_settings(); decider = load_decider(settings.deciders_dir)\n"
        "registry = ModelRegistry.from_settings(settings, decider)\n"
        "model_dir = registry.model_dir({version!r})\n"
        "registry.load_text(registry.ref({version!r}).run_id, REFERENCE_PROFILE)\n"
        "registry.version_tags({version!r})\n"
        "base = Scorer.from_model_dir(model_dir, decider.spec.feature_names)\n"
        "FastScorer.from_booster(base.booster, base.feature_names, batch_kernel='rows')\n"),
}


def load_once(venv: Path, env: dict[str, str], cwd: Path, name: str, version: str) -> float:
    """Wall time of a fresh interpreter of the image's virtualenv loading the champion, to its exit."""
    started = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-c", _LOADERS[name].format(version=version)], cwd=cwd, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - started


class TrackingServer:
    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def start_tracking_server(root: Path) -> TrackingServer:
    from mlp_platform.local_stack import _http_ok, _wait, free_port

    root.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", (root / "artefacts").as_uri(),
                             "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _http_ok(f"{url}/health"), "the MLflow tracking server", proc, 180)
    return TrackingServer(proc, url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    server = None
    try:
        t0 = time.perf_counter()
        venv, opt = build_image_venv(tmp)
        install_s = time.perf_counter() - t0
        print(f"image virtualenv installed in {install_s:.1f} s")
        data = tmp / "var" / "lib" / "mlp"
        os.environ["MLP_DATA_DIR"] = str(data)
        server = start_tracking_server(tmp / "mlflow")
        os.environ["MLFLOW_TRACKING_URI"] = server.url
        from mlp_platform.registry.mlflow_registry import ModelRegistry
        from mlp_platform.serving.routing import RoutingFile, RoutingState
        from mlp_platform.settings import load_settings

        settings = load_settings()
        champion, _shadow, info = register_models(settings)
        ModelRegistry.from_settings(settings).set_alias("champion", champion)
        RoutingFile(settings.routing_path).write(RoutingState(champion=champion, updated_by="bench"))
        cache = tmp / "var" / "cache" / "fast_scorer"
        env = image_env(stages(DOCKERFILE.read_text())["runtime"])
        env.update({"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "MLP_DATA_DIR": str(data),
                    "MLP_DECIDERS_DIR": str(opt / "deciders"), "MLP_FAST_SCORER_CACHE": str(cache),
                    "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "MLP_API_KEYS": "bench-key",
                    "MLP_FEATURE_STORE_URL": f"embedded://{tmp / 'store'}",
                    "MLP_DECISION_LOG_DIR": str(data / "decisions" / "pod-0"),
                    "MLP_REVIEW_DATABASE_URL": f"sqlite:///{tmp / 'review' / 'cases.db'}"})
        results: dict[str, list[float]] = {"cold": [], "warm": [], "load_ours": [], "load_mlflow_client": []}
        for i in range(args.rounds):
            shutil.rmtree(cache, ignore_errors=True)
            results["cold"].append(start_once(venv, env, tmp))
            results["warm"].append(start_once(venv, env, tmp))
            for name in (("load_ours", "load_mlflow_client") if i % 2 else ("load_mlflow_client", "load_ours")):
                results[name].append(load_once(venv, env, tmp, name, champion))
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()))
        summary = {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": v}
                   for name, v in results.items()}
        for name, s in summary.items():
            print(f"{name:18s}: {s['median_s']:.2f} s ({s['min_s']:.2f}-{s['max_s']:.2f})")
        ratios = [b / a for a, b in zip(results["load_ours"], results["load_mlflow_client"], strict=True)]
        summary["load_ratio_mlflow_client_over_ours"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                          "max": max(ratios)}
        print(f"champion load, MLflow client / ours: {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}), paired per round")
        print("target: under 3 s with the model compiled (cold)")
        if args.json:
            args.json.write_text(json.dumps({"when": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
                                             "model": info[champion], "install_s": install_s, **summary}, indent=2))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
