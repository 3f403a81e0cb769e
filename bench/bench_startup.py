"""Benchmark: the scoring process's start-up, from process start to /readyz 200 (issue 20: "ready in
under 3 s with the model compiled, excluding the image pull").

Not a test: it builds the scoring image's contents the way deploy/service/Dockerfile does (a clean
virtualenv from ``uv sync --frozen --no-dev --no-editable``, see tests/test_scoring_image.py),
registers the serving benchmark's model (300 trees, 31 leaves, 32 features) in a local MLflow store,
then starts the image's command from that virtualenv, outside the repository, with the image's
environment, ``--rounds`` times in each of two conditions, interleaved:

* **cold**: an empty fast-scorer cache: the champion's trees are compiled to C at load (a new pod);
* **warm**: the cache kept from the previous start (a restarted container on the same volume).

Medians (min-max) of the wall time from ``Popen`` to the first 200 of /readyz (polled every 20 ms).

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        t0 = time.perf_counter()
        venv, opt = build_image_venv(tmp)
        install_s = time.perf_counter() - t0
        print(f"image virtualenv installed in {install_s:.1f} s")
        data = tmp / "var" / "lib" / "mlp"
        os.environ["MLP_DATA_DIR"] = str(data)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from mlp_platform.serving.routing import RoutingFile, RoutingState
        from mlp_platform.settings import load_settings

        settings = load_settings()
        champion, _shadow, info = register_models(settings)
        RoutingFile(settings.routing_path).write(RoutingState(champion=champion, updated_by="bench"))
        cache = tmp / "var" / "cache" / "fast_scorer"
        env = image_env(stages(DOCKERFILE.read_text())["runtime"])
        env.update({"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "MLP_DATA_DIR": str(data),
                    "MLP_DECIDERS_DIR": str(opt / "deciders"), "MLP_FAST_SCORER_CACHE": str(cache),
                    "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "MLP_API_KEYS": "bench-key",
                    "MLP_FEATURE_STORE_URL": f"embedded://{tmp / 'store'}",
                    "MLP_DECISION_LOG_DIR": str(data / "decisions" / "pod-0")})
        results: dict[str, list[float]] = {"cold": [], "warm": []}
        for i in range(args.rounds):
            shutil.rmtree(cache, ignore_errors=True)
            results["cold"].append(start_once(venv, env, tmp))
            results["warm"].append(start_once(venv, env, tmp))
            print(f"round {i + 1}/{args.rounds}: cold {results['cold'][-1]:.2f} s, warm {results['warm'][-1]:.2f} s")
        summary = {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": v}
                   for name, v in results.items()}
        for name, s in summary.items():
            print(f"{name:5s} to /readyz: {s['median_s']:.2f} s ({s['min_s']:.2f}-{s['max_s']:.2f})")
        print("target: under 3 s with the model compiled (cold)")
        if args.json:
            args.json.write_text(json.dumps({"when": dt.datetime.now(dt.UTC).isoformat(), "machine": machine(),
                                             "model": info[champion], "install_s": install_s, **summary}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
