"""Benchmark: loading the Dagster code location with many deciders (issue 19, part 4: "generating the
Dagster definitions for 10 deciders loads the code location in under 10 s").

Not a test: it measures, on this machine, a fresh interpreter loading the code location the way the
Dagster webserver's code server does (``import assets.definitions`` builds the ``Definitions`` from
the declarations, then ``get_repository_def()`` resolves every asset, check, job, schedule and
sensor), for:

* the repository's deciders (fraud + credit), and
* ten application deciders (credit and nine variants, each its own registered model) + fraud.

Each configuration is loaded in ``--rounds`` fresh processes, interleaved; medians (min-max) of the
wall time of the whole process (interpreter start included) and of the load itself.

    .venv/bin/python bench/bench_code_location.py [--rounds 5] [--deciders 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from bench_serving import PY, machine  # noqa: E402

PROBE = """
import time
t = time.perf_counter()
from assets.definitions import defs
repo = defs.get_repository_def()
elapsed = time.perf_counter() - t
import json
print(json.dumps({"load_s": elapsed, "assets": len(repo.assets_defs_by_key), "jobs": len(repo.get_all_jobs()),
                  "sensors": len(repo.sensor_defs), "checks": len(repo.asset_checks_defs_by_key)}))
"""


def write_deciders(directory: Path, n: int) -> None:
    from mlp_platform.deciders.declaration import load_decider, write_variant

    source = ROOT / "deciders"
    write_variant(load_decider(source, "fraud"), directory, {})
    credit = load_decider(source, "credit")
    write_variant(credit, directory, {})
    base = yaml.safe_load((directory / "credit.yaml").read_text())
    for i in range(1, n):
        doc = dict(base, name=f"credit_{i}", model=dict(base["model"], registered_name=f"credit-origination-{i}"))
        (directory / f"credit_{i}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def load_once(env: dict[str, str]) -> dict:
    t = time.perf_counter()
    out = subprocess.run([PY, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deciders", type=int, default=10, help="application deciders in the large configuration")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_code_location_"))
    many = tmp / "deciders"
    write_deciders(many, args.deciders)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLP_", "MLFLOW_"))}
    base_env["MLP_DATA_DIR"] = str(tmp / "data")
    configs = {"repository (fraud + credit)": dict(base_env),
               f"{args.deciders} application deciders + fraud": dict(base_env, MLP_DECIDERS_DIR=str(many))}
    load_once(configs["repository (fraud + credit)"])  # warm the file cache and the bytecode
    results: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name in (list(configs) if r % 2 == 0 else list(configs)[::-1]):
            results[name].append(load_once(configs[name]))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k}: {v[-1]['wall_s']:.2f} s" for k, v in results.items()),
              flush=True)

    def rng(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    lines = []
    for name, runs in results.items():
        last = runs[-1]
        lines.append(f"{name:<34} process wall s {rng([x['wall_s'] for x in runs])}, definitions load s "
                     f"{rng([x['load_s'] for x in runs])}; {last['assets']} assets, {last['checks']} checks, "
                     f"{last['jobs']} jobs, {last['sensors']} sensors")
    lines.append("target: under 10 s for 10 deciders")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                         "machine": machine(), "results": results, "table": lines}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
