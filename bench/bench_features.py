"""Benchmark: building the feature tables for the real Fraud Detection Handbook dataset (1.75M rows).

Not a test: it measures, on this machine, what the platform pays to build its feature tables end to
end, the way Dagster runs it, and the reference pandas feature engineering of the Fraud Detection
Handbook (the de facto baseline for this dataset) in the same run, on the same machine.

    .venv/bin/python bench/bench_features.py [--repeats 3] [--day-repeats 5] [--json out.json]

What is timed (each in a throw-away data directory under $TMPDIR, never the repo's data/):

1. Full build, cold (a new, empty DuckDB file each repeat):
   - ingest of all 183 days (``ingest_days``: read the parquet, validate the data contracts, write
     raw.transactions / raw.labels), in a child Python process as a Dagster step would;
   - ``dbt build`` of staging + features over all days (vars min_day..max_day), CLI subprocess;
   - ``dbt build`` of the training set, CLI subprocess. Every dbt data test runs.
2. Incremental day (re-ingest one day, then rebuild that day on the warm warehouse):
   a. ``dbt build`` (models + tests) of staging + features for the day, CLI subprocess (Dagster's way);
   b. ``dbt run`` (no tests), CLI subprocess;
   c. ``dbt run`` in this process through ``dbtRunner(manifest=...)`` with a manifest parsed once
      (what a long-lived worker pays); d. the same with ``build`` (tests included).
   Before each rebuild the day's rows are deleted from the four feature tables (untimed), and after
   it the row counts are checked against raw.transactions, and the compiled SQL is checked to be
   the one-day SQL: a rebuild that silently computed nothing, or everything, fails the benchmark.
3. Peer: the Handbook's baseline feature transformation (pandas groupby/apply with time-based
   rolling windows), reading the same parquet, in a child process.

Each dbt CLI invocation gets a fresh --target-path seeded with the partial_parse.msgpack of a
prior ``dbt parse`` (what dagster-dbt does with the project's target/), and its own --log-path, so
the benchmark never touches dbt_project/target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DBT_PROJECT = ROOT / "dbt_project"
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "fraud_handbook" / "transactions.parquet"
FIRST_DAY = dt.date(2018, 4, 1)
DAYS = 183
END_DAY = FIRST_DAY + dt.timedelta(days=DAYS)
LAST_DAY = END_DAY - dt.timedelta(days=1)
FEATURE_TABLES = ("fv_customer_velocity", "fv_merchant_velocity", "fv_merchant_risk", "transaction_features")
DAILY_SELECT = ["path:models/staging", "path:models/features"]
TRAINING_SELECT = ["path:models/training"]
META_COLUMNS = {"transaction_id", "event_time", "event_date", "customer_id", "merchant_id", "channel", "country",
                "merchant_category", "currency", "feature_spec_hash"}


# --------------------------------------------------------------------------------------------------
# Child processes, with their own peak RSS (os.wait4 gives the rusage of exactly that child)
# --------------------------------------------------------------------------------------------------

@dataclass
class ChildRun:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    output: str


GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def run_child(cmd: list[str], env: dict[str, str], cwd: Path, log_file: Path) -> ChildRun:
    """Run a command; wall time, CPU time (user+sys, its children included) and peak RSS.

    Peak RSS comes from GNU time's %M when available: Linux carries the RSS high-water mark of the
    spawning process across exec, so os.wait4 on a child spawned by this (large) process would
    report at least this process's own RSS. Spawned from the tiny `time` process, it is exact."""
    rss_file = log_file.with_suffix(".rss")
    full = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *cmd] if GNU_TIME else cmd
    with open(log_file, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(full, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kb = float(usage.ru_maxrss)
    if GNU_TIME and rss_file.exists():
        lines = rss_file.read_text().split()
        if lines and lines[-1].isdigit():
            rss_kb = float(lines[-1])
    return ChildRun(wall, usage.ru_utime + usage.ru_stime, rss_kb / 1024, proc.returncode,
                    log_file.read_text(errors="replace"))


def child_env(data_dir: Path, dataset: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "MLP_DATA_DIR": str(data_dir),
        "MLP_SOURCE": "handbook",
        "MLP_HANDBOOK_PATH": str(dataset),
        "MLP_WAREHOUSE_PATH": str(data_dir / "warehouse.duckdb"),
        "MLP_DBT_TARGET": "local",
        "DO_NOT_TRACK": "1",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    })
    return env


def fail(what: str, detail: str = "") -> None:
    print(f"\nBENCHMARK FAILED: {what}", file=sys.stderr)
    if detail:
        print(detail[-6000:], file=sys.stderr)
    raise SystemExit(1)


# --------------------------------------------------------------------------------------------------
# Platform: ingest and dbt
# --------------------------------------------------------------------------------------------------

def ingest_child_main(first: str, end: str) -> None:
    """Runs in a child process: ingest [first, end) with the settings from the environment."""
    t0 = time.perf_counter()
    from mlp_platform.data.ingest import ingest_days
    from mlp_platform.data.warehouse import DuckDBWarehouse
    from mlp_platform.settings import load_settings

    settings = load_settings()
    t1 = time.perf_counter()
    result = ingest_days(settings, DuckDBWarehouse(settings.duckdb_path), dt.date.fromisoformat(first),
                         dt.date.fromisoformat(end))
    t2 = time.perf_counter()
    print("INGEST_RESULT " + json.dumps({"imports_s": t1 - t0, "ingest_s": t2 - t1,
                                          "transactions": result.transactions, "labels": result.labels}))


def run_ingest_child(data_dir: Path, dataset: Path, first: dt.date, end: dt.date, log_dir: Path) -> dict:
    run = run_child([sys.executable, str(Path(__file__).resolve()), "--_ingest-child", first.isoformat(),
                     end.isoformat()], child_env(data_dir, dataset), ROOT, log_dir / "ingest.log")
    if run.returncode != 0:
        fail("ingest failed", run.output)
    line = next(ln for ln in run.output.splitlines() if ln.startswith("INGEST_RESULT "))
    out = json.loads(line.split(" ", 1)[1])
    out.update(wall_s=run.wall_s, cpu_s=run.cpu_s, peak_rss_mb=run.peak_rss_mb)
    return out


def dbt_vars(first: dt.date | None = None, last: dt.date | None = None) -> str:
    out: dict[str, object] = {}
    if first is not None:
        out.update(min_day=first.isoformat(), max_day=(last or first).isoformat())
    out.update(label_delay_days=7, label_maturity_days=14)
    return json.dumps(out)


def dbt_args(command: str, vars_json: str, select: list[str], target: Path, logs: Path) -> list[str]:
    return [command, "--vars", vars_json, "--select", *select, "--project-dir", str(DBT_PROJECT),
            "--profiles-dir", str(DBT_PROJECT), "--target-path", str(target), "--log-path", str(logs)]


class TargetDirs:
    """Fresh --target-path / --log-path per dbt invocation, seeded with a partial-parse file."""

    def __init__(self, root: Path, seed_partial_parse: Path | None):
        self.root = root
        self.seed = seed_partial_parse
        self.n = 0

    def new(self, name: str) -> tuple[Path, Path]:
        self.n += 1
        target = self.root / f"{self.n:03d}-{name}" / "target"
        logs = target.parent / "logs"
        target.mkdir(parents=True)
        logs.mkdir()
        if self.seed is not None and self.seed.exists():
            shutil.copy(self.seed, target / "partial_parse.msgpack")
        return target, logs


def run_results(target: Path) -> dict:
    """Summary of dbt's run_results.json: its own elapsed time, model vs test time, counts, failures."""
    data = json.loads((target / "run_results.json").read_text())
    models = [r for r in data["results"] if r["unique_id"].startswith("model.")]
    tests = [r for r in data["results"] if r["unique_id"].startswith("test.")]
    bad = [r["unique_id"] for r in data["results"] if r["status"] not in ("success", "pass")]
    return {"dbt_elapsed_s": data["elapsed_time"], "models": len(models), "tests": len(tests),
            "model_time_sum_s": sum(r["execution_time"] for r in models),
            "test_time_sum_s": sum(r["execution_time"] for r in tests),
            "node_times_s": {r["unique_id"].split(".")[2]: round(r["execution_time"], 3) for r in data["results"]},
            "not_ok": bad}


def run_dbt_cli(command: str, vars_json: str, select: list[str], dirs: TargetDirs, data_dir: Path,
                dataset: Path, name: str) -> dict:
    target, logs = dirs.new(name)
    cmd = [str(Path(sys.executable).with_name("dbt")), *dbt_args(command, vars_json, select, target, logs)]
    run = run_child(cmd, child_env(data_dir, dataset), DBT_PROJECT, logs / "stdout.log")
    if run.returncode != 0:
        fail(f"dbt {command} ({name}) failed", run.output)
    out = run_results(target)
    if out["not_ok"]:
        fail(f"dbt {command} ({name}): not ok: {out['not_ok']}", run.output)
    out.update(wall_s=run.wall_s, cpu_s=run.cpu_s, peak_rss_mb=run.peak_rss_mb,
               startup_s=run.wall_s - out["dbt_elapsed_s"],
               target=str(target))
    return out


def check_compiled_for_day(target: Path, day: dt.date) -> None:
    """The compiled transaction_features SQL of a day rebuild must be the one-day SQL."""
    compiled = list(target.glob("run/**/transaction_features.sql")) + list(
        target.glob("compiled/**/transaction_features.sql"))
    if not compiled:
        fail(f"no compiled transaction_features.sql under {target}")
    if not any(day.isoformat() in p.read_text() for p in compiled):
        fail(f"compiled transaction_features SQL under {target} does not restrict to {day}")


# --------------------------------------------------------------------------------------------------
# Warehouse checks (connections are always closed before dbt runs: DuckDB allows one writer process)
# --------------------------------------------------------------------------------------------------

def release_duckdb() -> None:
    """Close the DuckDB database dbt-duckdb keeps open in this process after an in-process run.

    DuckDB allows one writing process per file: a long-lived dbt worker has to let go of the file so
    the ingest step (another process) and CLI runs can write. Timed as part of the warm rebuild (it
    includes DuckDB's checkpoint on close, which a CLI process pays at exit too)."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    env = DuckDBConnectionManager._ENV
    if env is not None and getattr(env, "conn", None) is not None:
        env.close()


def duck(path: Path):
    import duckdb

    return duckdb.connect(str(path))


def verify_full(db: Path) -> dict:
    with duck(db) as con:
        raw = con.execute("select count(*) from raw.transactions").fetchone()[0]
        feats = con.execute("select count(*) from features.transaction_features").fetchone()[0]
        training = con.execute("select count(*) from training.training_set").fetchone()[0]
        days = con.execute("select count(distinct event_date) from features.transaction_features").fetchone()[0]
        columns = [c for c in con.sql("select * from features.transaction_features limit 0").columns
                   if c not in META_COLUMNS]
    if raw != feats or feats == 0:
        fail(f"full build: transaction_features has {feats} rows, raw.transactions {raw}")
    if training == 0 or days != DAYS:
        fail(f"full build: training_set {training} rows, feature days {days} (expected {DAYS})")
    return {"raw_rows": raw, "feature_rows": feats, "training_rows": training, "feature_columns": len(columns)}


def clear_day(db: Path, day: dt.date) -> None:
    """Untimed: remove the day's feature rows so the rebuild provably recomputes them."""
    with duck(db) as con:
        for table in FEATURE_TABLES:
            col = "as_of_date" if table == "fv_merchant_risk" else "event_date"
            con.execute(f"delete from features.{table} where {col} = ?", [day])


def verify_day(db: Path, day: dt.date, expected_total: int) -> int:
    with duck(db) as con:
        raw = con.execute("select count(*) from raw.transactions where event_date = ?", [day]).fetchone()[0]
        counts = {t: con.execute(f"select count(*) from features.{t} where "
                                 f"{'as_of_date' if t == 'fv_merchant_risk' else 'event_date'} = ?",
                                 [day]).fetchone()[0] for t in FEATURE_TABLES}
        total = con.execute("select count(*) from features.transaction_features").fetchone()[0]
    if raw == 0 or any(counts[t] != raw for t in ("fv_customer_velocity", "fv_merchant_velocity",
                                                   "transaction_features")) or counts["fv_merchant_risk"] == 0:
        fail(f"day rebuild {day}: raw {raw} rows, feature tables {counts}")
    if total != expected_total:
        fail(f"day rebuild {day}: transaction_features now {total} rows, expected {expected_total}")
    return raw


# --------------------------------------------------------------------------------------------------
# Peer: the Fraud Detection Handbook's baseline feature transformation (pandas)
# --------------------------------------------------------------------------------------------------

def peer_child_main(dataset: str) -> None:
    """Runs in a child process. Reproduces the book's chapter "Baseline feature transformation":
    is_weekend / is_night with per-row apply, per-customer rolling count and mean amount over 1/7/30
    days (groupby + apply + rolling('Nd')), per-terminal delayed count and risk (delay 7 days,
    windows 1/7/30: rolling over delay+window minus rolling over delay, NaN risk -> 0).
    Same operations as the book's code; the book reads daily pickles, here the concatenated parquet."""
    import warnings

    import pandas as pd

    warnings.filterwarnings("ignore")  # pandas' DeprecationWarning for apply on grouping columns

    def is_weekend(tx_datetime) -> int:
        return int(tx_datetime.weekday() >= 5)

    def is_night(tx_datetime) -> int:
        return int(tx_datetime.hour <= 6)

    def customer_spending(customer_tx, windows=(1, 7, 30)):
        customer_tx = customer_tx.sort_values("TX_DATETIME")
        customer_tx.index = customer_tx.TX_DATETIME
        for w in windows:
            total = customer_tx["TX_AMOUNT"].rolling(f"{w}d").sum()
            count = customer_tx["TX_AMOUNT"].rolling(f"{w}d").count()
            customer_tx[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = list(count)
            customer_tx[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = list(total / count)
        customer_tx.index = customer_tx.TRANSACTION_ID
        return customer_tx

    def terminal_risk(terminal_tx, delay=7, windows=(1, 7, 30), feature="TERMINAL_ID"):
        terminal_tx = terminal_tx.sort_values("TX_DATETIME")
        terminal_tx.index = terminal_tx.TX_DATETIME
        fraud_delay = terminal_tx["TX_FRAUD"].rolling(f"{delay}d").sum()
        tx_delay = terminal_tx["TX_FRAUD"].rolling(f"{delay}d").count()
        for w in windows:
            fraud_delay_window = terminal_tx["TX_FRAUD"].rolling(f"{delay + w}d").sum()
            tx_delay_window = terminal_tx["TX_FRAUD"].rolling(f"{delay + w}d").count()
            n_fraud = fraud_delay_window - fraud_delay
            n_tx = tx_delay_window - tx_delay
            terminal_tx[f"{feature}_NB_TX_{w}DAY_WINDOW"] = list(n_tx)
            terminal_tx[f"{feature}_RISK_{w}DAY_WINDOW"] = list(n_fraud / n_tx)
        terminal_tx.index = terminal_tx.TRANSACTION_ID
        terminal_tx.fillna(0, inplace=True)
        return terminal_tx

    times = {}
    t = time.perf_counter()
    df = pd.read_parquet(dataset)
    times["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    df["TX_DURING_WEEKEND"] = df.TX_DATETIME.apply(is_weekend)
    df["TX_DURING_NIGHT"] = df.TX_DATETIME.apply(is_night)
    times["weekend_night_s"] = time.perf_counter() - t
    t = time.perf_counter()
    df = df.groupby("CUSTOMER_ID").apply(customer_spending)
    df = df.sort_values("TX_DATETIME").reset_index(drop=True)
    times["customer_s"] = time.perf_counter() - t
    t = time.perf_counter()
    df = df.groupby("TERMINAL_ID").apply(terminal_risk)
    df = df.sort_values("TX_DATETIME").reset_index(drop=True)
    times["terminal_s"] = time.perf_counter() - t
    inputs = ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"] + [
        f"CUSTOMER_ID_{k}_{w}DAY_WINDOW" for w in (1, 7, 30) for k in ("NB_TX", "AVG_AMOUNT")] + [
        f"TERMINAL_ID_{k}_{w}DAY_WINDOW" for w in (1, 7, 30) for k in ("NB_TX", "RISK")]
    missing = [c for c in inputs if c not in df.columns]
    times.update(rows=len(df), features=len(inputs) - len(missing), missing=missing,
                 nulls=int(df[[c for c in inputs if c in df.columns]].isna().sum().sum()))
    print("PEER_RESULT " + json.dumps(times))


def run_peer_child(dataset: Path, log_dir: Path, n: int) -> dict:
    run = run_child([sys.executable, str(Path(__file__).resolve()), "--_peer-child", str(dataset)],
                    dict(os.environ), ROOT, log_dir / f"peer-{n}.log")
    if run.returncode != 0:
        fail("peer failed", run.output)
    out = json.loads(next(ln for ln in run.output.splitlines() if ln.startswith("PEER_RESULT ")).split(" ", 1)[1])
    out["compute_s"] = out["read_s"] + out["weekend_night_s"] + out["customer_s"] + out["terminal_s"]
    out.update(wall_s=run.wall_s, cpu_s=run.cpu_s, peak_rss_mb=run.peak_rss_mb)
    return out


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------

def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 3) for v in values]}


def machine_info() -> dict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    mem_kb = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal:")), 0)

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "absent"

    return {
        "date_utc": sh("date -u"), "nproc": sh("nproc"),
        "cpu": sh("lscpu | grep 'Model name' | sed 's/.*: *//'"), "ram_gib": round(mem_kb / 1024 ** 2, 1),
        "python": platform.python_version(), "duckdb": version("duckdb"), "dbt_core": version("dbt-core"),
        "dbt_duckdb": version("dbt-duckdb"), "pandas": version("pandas"), "polars": version("polars"),
        "load_avg_start": os.getloadavg(),
    }


def row(label: str, s: dict | None, extra: str = "") -> str:
    if s is None:
        return f"| {label} | – | – | – | {extra} |"
    return f"| {label} | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} | {extra} |"


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold full builds (and peer runs); median")
    parser.add_argument("--day-repeats", type=int, default=5, help="repeats of each incremental-day mode")
    parser.add_argument("--peer-repeats", type=int, default=None, help="peer runs (default: --repeats)")
    parser.add_argument("--day", default="2018-07-15", help="day rebuilt incrementally")
    parser.add_argument("--dataset", default=os.environ.get("MLP_HANDBOOK_PATH", str(DEFAULT_DATASET)))
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--json", dest="json_out", help="write every figure to this JSON file")
    parser.add_argument("--_ingest-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_peer-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._ingest_child:
        return ingest_child_main(*args._ingest_child)
    if args._peer_child:
        return peer_child_main(args._peer_child)

    dataset = Path(args.dataset).resolve()
    if not dataset.exists():
        fail(f"dataset not found: {dataset} (set MLP_HANDBOOK_PATH or --dataset)")
    day = dt.date.fromisoformat(args.day)
    if not FIRST_DAY + dt.timedelta(days=30) <= day <= LAST_DAY:
        fail(f"--day must be in {FIRST_DAY + dt.timedelta(days=30)}..{LAST_DAY} (30 days of context)")
    peer_repeats = args.peer_repeats if args.peer_repeats is not None else args.repeats

    from mlp_platform.features.dbt_codegen import spec_macro_in_sync
    from mlp_platform.features.spec import default_spec

    spec = default_spec()
    if not spec_macro_in_sync(DBT_PROJECT, spec):
        fail("dbt_project/macros/generated/feature_spec.sql is out of date: run `make prepare` first")

    info = machine_info()
    print(f"machine: {info['nproc']} CPU ({info['cpu']}), {info['ram_gib']} GiB RAM, Python {info['python']}, "
          f"DuckDB {info['duckdb']}, dbt-core {info['dbt_core']} / dbt-duckdb {info['dbt_duckdb']}, "
          f"pandas {info['pandas']}; load avg {info['load_avg_start']}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-"))
    results: dict = {"machine": info, "dataset": str(dataset), "day": day.isoformat(),
                     "spec_features": len(spec.feature_names)}
    bench_start = time.perf_counter()
    try:
        # One `dbt parse` (as `mlp prepare` does) seeds partial parsing for every invocation.
        seed_dir = tmp / "seed"
        seed_data = tmp / "seed-data"
        seed_data.mkdir()
        seed_target, seed_logs = seed_dir / "target", seed_dir / "logs"
        parse = run_child([str(Path(sys.executable).with_name("dbt")), "parse", "--project-dir", str(DBT_PROJECT),
                           "--profiles-dir", str(DBT_PROJECT), "--target-path", str(seed_target),
                           "--log-path", str(seed_logs)], child_env(seed_data, dataset), DBT_PROJECT,
                          tmp / "parse.log")
        if parse.returncode != 0:
            fail("dbt parse failed", parse.output)
        dirs = TargetDirs(tmp / "dbt", seed_target / "partial_parse.msgpack")

        # Where a dbt CLI process's fixed cost goes: importing dbt + the DuckDB adapter alone.
        imports = []
        for i in range(3):
            probe = run_child([sys.executable, "-c", "import dbt.cli.main, dbt.adapters.duckdb"],
                              child_env(seed_data, dataset), DBT_PROJECT, tmp / f"import-{i}.log")
            if probe.returncode != 0:
                fail("importing dbt failed", probe.output)
            imports.append(probe.wall_s)
        results["dbt_import_s"] = imports

        # ---------------------------------------------------------------- 1. full cold build
        full_runs = []
        data_dir = None
        for i in range(args.repeats):
            if data_dir is not None:
                shutil.rmtree(data_dir)
            data_dir = tmp / f"data-{i}"
            data_dir.mkdir()
            ingest = run_ingest_child(data_dir, dataset, FIRST_DAY, END_DAY, data_dir)
            feats = run_dbt_cli("build", dbt_vars(FIRST_DAY, LAST_DAY), DAILY_SELECT, dirs, data_dir, dataset,
                                f"full-features-{i}")
            train = run_dbt_cli("build", dbt_vars(), TRAINING_SELECT, dirs, data_dir, dataset, f"full-training-{i}")
            check = verify_full(data_dir / "warehouse.duckdb")
            total = ingest["wall_s"] + feats["wall_s"] + train["wall_s"]
            full_runs.append({"ingest": ingest, "dbt_features": feats, "dbt_training": train, "check": check,
                              "total_s": total})
            print(f"full build {i + 1}/{args.repeats}: ingest {ingest['wall_s']:.2f}s + dbt features "
                  f"{feats['wall_s']:.2f}s + dbt training {train['wall_s']:.2f}s = {total:.2f}s "
                  f"({check['feature_rows']:,} rows, {feats['tests'] + train['tests']} dbt tests passed)", flush=True)
        results["full"] = full_runs

        # ---------------------------------------------------------------- 2. incremental day
        from dbt.cli.main import dbtRunner

        from mlp_platform.data.ingest import ingest_days
        from mlp_platform.data.warehouse import DuckDBWarehouse
        from mlp_platform.settings import load_settings

        env = child_env(data_dir, dataset)
        for key in ("MLP_DATA_DIR", "MLP_SOURCE", "MLP_HANDBOOK_PATH", "MLP_WAREHOUSE_PATH", "MLP_DBT_TARGET",
                    "DO_NOT_TRACK", "DBT_SEND_ANONYMOUS_USAGE_STATS"):
            os.environ[key] = env[key]
        settings = load_settings()
        db = settings.duckdb_path
        warehouse = DuckDBWarehouse(db)
        total_rows = full_runs[-1]["check"]["feature_rows"]
        next_day = day + dt.timedelta(days=1)
        ingest_days(settings, warehouse, day, next_day)  # warm-up (imports, file cache), untimed

        t = time.perf_counter()
        target, logs = dirs.new("warm-parse")
        parsed = dbtRunner().invoke(["parse", "--project-dir", str(DBT_PROJECT), "--profiles-dir", str(DBT_PROJECT),
                                     "--target-path", str(target), "--log-path", str(logs), "--quiet"])
        parse_s = time.perf_counter() - t
        if not parsed.success or parsed.result is None:
            fail(f"in-process dbt parse failed: {parsed.exception}")
        runner = dbtRunner(manifest=parsed.result)
        results["warm_parse_s"] = parse_s

        def warm(command: str, name: str) -> dict:
            target, logs = dirs.new(name)
            t = time.perf_counter()
            res = runner.invoke([*dbt_args(command, dbt_vars(day), DAILY_SELECT, target, logs), "--quiet"])
            t_close = time.perf_counter()
            release_duckdb()
            wall = time.perf_counter() - t
            close_s = time.perf_counter() - t_close
            if not res.success:
                fail(f"in-process dbt {command} failed: {res.exception}", "")
            out = run_results(target)
            if out["not_ok"]:
                fail(f"in-process dbt {command}: not ok: {out['not_ok']}")
            out.update(wall_s=wall, startup_s=wall - out["dbt_elapsed_s"], close_s=close_s, target=str(target))
            return out

        modes = {
            "cli_build": lambda i: run_dbt_cli("build", dbt_vars(day), DAILY_SELECT, dirs, data_dir, dataset,
                                               f"day-cli-build-{i}"),
            "cli_run": lambda i: run_dbt_cli("run", dbt_vars(day), DAILY_SELECT, dirs, data_dir, dataset,
                                             f"day-cli-run-{i}"),
            "warm_run": lambda i: warm("run", f"day-warm-run-{i}"),
            "warm_build": lambda i: warm("build", f"day-warm-build-{i}"),
        }
        day_runs: dict[str, list[dict]] = {m: [] for m in modes}
        for i in range(args.day_repeats):
            for mode, fn in modes.items():  # interleaved, so machine noise spreads over all modes
                t = time.perf_counter()
                ingest_days(settings, warehouse, day, next_day)
                ingest_s = time.perf_counter() - t
                clear_day(db, day)
                out = fn(i)
                check_compiled_for_day(Path(out["target"]), day)
                out["rows"] = verify_day(db, day, total_rows)
                out["ingest_s"] = ingest_s
                out["total_s"] = ingest_s + out["wall_s"]
                day_runs[mode].append(out)
            print(f"day {day} round {i + 1}/{args.day_repeats}: " + ", ".join(
                f"{m} {day_runs[m][-1]['ingest_s']:.2f}+{day_runs[m][-1]['wall_s']:.2f}s" for m in modes)
                + f" ({day_runs['cli_build'][-1]['rows']:,} rows)", flush=True)
        results["day_runs"] = day_runs

        # ---------------------------------------------------------------- 3. peer
        peer_runs = []
        if not args.skip_peer:
            for i in range(peer_repeats):
                p = run_peer_child(dataset, tmp, i)
                if p["rows"] != total_rows or p["missing"] or p["nulls"]:
                    fail(f"peer output unexpected: {p}")
                peer_runs.append(p)
                print(f"peer {i + 1}/{peer_repeats}: read {p['read_s']:.2f}s, weekend/night "
                      f"{p['weekend_night_s']:.2f}s, customer {p['customer_s']:.2f}s, terminal "
                      f"{p['terminal_s']:.2f}s = {p['compute_s']:.2f}s (process {p['wall_s']:.2f}s)", flush=True)
        results["peer"] = peer_runs
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")

    results["machine"]["load_avg_end"] = os.getloadavg()
    results["bench_wall_s"] = time.perf_counter() - bench_start
    results["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    results["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = summarise(results)
    results["summary"] = summary
    print_report(results, summary)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json_out}")


def summarise(r: dict) -> dict:
    full = r["full"]
    s: dict = {
        "full_total": stats([x["total_s"] for x in full]),
        "full_ingest": stats([x["ingest"]["wall_s"] for x in full]),
        "full_ingest_in_function": stats([x["ingest"]["ingest_s"] for x in full]),
        "full_dbt_features": stats([x["dbt_features"]["wall_s"] for x in full]),
        "full_dbt_features_elapsed": stats([x["dbt_features"]["dbt_elapsed_s"] for x in full]),
        "full_dbt_features_startup": stats([x["dbt_features"]["startup_s"] for x in full]),
        "full_dbt_features_model_sum": stats([x["dbt_features"]["model_time_sum_s"] for x in full]),
        "full_dbt_features_test_sum": stats([x["dbt_features"]["test_time_sum_s"] for x in full]),
        "full_dbt_training": stats([x["dbt_training"]["wall_s"] for x in full]),
        "full_dbt_training_startup": stats([x["dbt_training"]["startup_s"] for x in full]),
        "full_dbt_training_model_sum": stats([x["dbt_training"]["model_time_sum_s"] for x in full]),
        "full_dbt_training_test_sum": stats([x["dbt_training"]["test_time_sum_s"] for x in full]),
        "rows": full[-1]["check"]["feature_rows"],
        "training_rows": full[-1]["check"]["training_rows"],
        "feature_columns": full[-1]["check"]["feature_columns"],
        "dbt_tests": full[-1]["dbt_features"]["tests"] + full[-1]["dbt_training"]["tests"],
        "dbt_models": full[-1]["dbt_features"]["models"] + full[-1]["dbt_training"]["models"],
        "peak_rss_mb": {
            "ingest": max(x["ingest"]["peak_rss_mb"] for x in full),
            "dbt_features": max(x["dbt_features"]["peak_rss_mb"] for x in full),
            "dbt_training": max(x["dbt_training"]["peak_rss_mb"] for x in full),
        },
    }
    s["rows_per_s"] = s["rows"] / s["full_total"]["median"]
    s["full_total_cpu"] = stats([x["ingest"]["cpu_s"] + x["dbt_features"]["cpu_s"] + x["dbt_training"]["cpu_s"]
                                 for x in full])
    s["full_model_times"] = {
        name: statistics.median(x[part]["node_times_s"][name] for x in full)
        for part in ("dbt_features", "dbt_training") for name in full[0][part]["node_times_s"]
        if name in FEATURE_TABLES + ("stg_transactions", "stg_labels", "training_set")}
    for mode, runs in r["day_runs"].items():
        s[f"day_{mode}"] = stats([x["wall_s"] for x in runs])
        s[f"day_{mode}_total"] = stats([x["total_s"] for x in runs])
        s[f"day_{mode}_elapsed"] = stats([x["dbt_elapsed_s"] for x in runs])
        s[f"day_{mode}_startup"] = stats([x["startup_s"] for x in runs])
        s[f"day_{mode}_model_sum"] = stats([x["model_time_sum_s"] for x in runs])
        s[f"day_{mode}_test_sum"] = stats([x["test_time_sum_s"] for x in runs])
        if "close_s" in runs[0]:
            s[f"day_{mode}_close"] = stats([x["close_s"] for x in runs])
        if "peak_rss_mb" in runs[0]:
            s["peak_rss_mb"][f"day_{mode}"] = max(x["peak_rss_mb"] for x in runs)
    s["day_ingest"] = stats([x["ingest_s"] for runs in r["day_runs"].values() for x in runs])
    s["day_rows"] = r["day_runs"]["cli_build"][0]["rows"]
    s["day_tests"] = r["day_runs"]["cli_build"][0]["tests"]
    s["warm_parse_s"] = r["warm_parse_s"]
    s["dbt_import"] = stats(r["dbt_import_s"])
    if r["peer"]:
        s["peer_compute"] = stats([x["compute_s"] for x in r["peer"]])
        s["peer_process"] = stats([x["wall_s"] for x in r["peer"]])
        for k in ("read_s", "weekend_night_s", "customer_s", "terminal_s"):
            s[f"peer_{k}"] = stats([x[k] for x in r["peer"]])
        s["peer_features"] = r["peer"][0]["features"]
        s["peak_rss_mb"]["peer"] = max(x["peak_rss_mb"] for x in r["peer"])
        s["ratio_peer_to_platform_full"] = s["peer_compute"]["median"] / s["full_total"]["median"]
        s["peer_cpu"] = stats([x["cpu_s"] for x in r["peer"]])
        s["ratio_peer_to_platform_full_cpu"] = s["peer_cpu"]["median"] / s["full_total_cpu"]["median"]
    return s


def print_report(r: dict, s: dict) -> None:
    m = r["machine"]
    n_full = s["full_total"]["n"]
    n_day = s["day_cli_build"]["n"]
    print("\n" + "=" * 100)
    print(f"Feature tables benchmark — {m['date_utc']}")
    print(f"machine: nproc={m['nproc']}, CPU {m['cpu']}, RAM {m['ram_gib']} GiB; Python {m['python']}, "
          f"DuckDB {m['duckdb']}, dbt-core {m['dbt_core']}, dbt-duckdb {m['dbt_duckdb']}, pandas {m['pandas']}, "
          f"polars {m['polars']}")
    print(f"load average at start {tuple(round(x, 2) for x in m['load_avg_start'])}, end "
          f"{tuple(round(x, 2) for x in m['load_avg_end'])}; benchmark wall {r['bench_wall_s']:.0f} s")
    print(f"dataset: {s['rows']:,} transactions, {DAYS} days; platform: {s['feature_columns']} feature columns, "
          f"{s['dbt_models']} dbt models, {s['dbt_tests']} dbt data tests; training set {s['training_rows']:,} rows")
    print()
    print("| measurement (seconds, wall) | median | min | max | notes |")
    print("|---|---:|---:|---:|---|")
    print(row(f"**Full build, cold** (ingest + dbt build features + dbt build training), n={n_full}",
              s["full_total"], f"{s['rows_per_s']:,.0f} rows/s; CPU (user+sys) {s['full_total_cpu']['median']:.1f} s; "
                               "target ≤ 30 s"))
    print(row("· ingest 183 days (child process)", s["full_ingest"],
              f"in ingest_days(): {s['full_ingest_in_function']['median']:.2f} s"))
    print(row("· dbt build staging+features, all days (CLI)", s["full_dbt_features"],
              f"dbt start+parse {s['full_dbt_features_startup']['median']:.2f} s; "
              f"Σ models {s['full_dbt_features_model_sum']['median']:.2f} s, "
              f"Σ tests {s['full_dbt_features_test_sum']['median']:.2f} s (2 threads)"))
    print(row("· dbt build training set (CLI)", s["full_dbt_training"],
              f"dbt start+parse {s['full_dbt_training_startup']['median']:.2f} s; "
              f"Σ models {s['full_dbt_training_model_sum']['median']:.2f} s, "
              f"Σ tests {s['full_dbt_training_test_sum']['median']:.2f} s"))
    print(row(f"**Day {r['day']}**: re-ingest one day (in-process, warm), n={s['day_ingest']['n']}",
              s["day_ingest"], f"{s['day_rows']:,} rows"))
    labels = {
        "cli_build": f"(a) dbt build staging+features, 1 day, CLI ({s['day_tests']} tests)",
        "cli_run": "(b) dbt run, 1 day, CLI (no tests)",
        "warm_run": "(c) dbt run, 1 day, in-process dbtRunner, parsed manifest",
        "warm_build": "(d) dbt build, 1 day, in-process dbtRunner, parsed manifest",
    }
    for mode, label in labels.items():
        print(row(f"{label}, n={n_day}", s[f"day_{mode}"],
                  f"ingest+rebuild {s[f'day_{mode}_total']['median']:.2f} s; dbt start/parse/overhead "
                  f"{s[f'day_{mode}_startup']['median']:.2f} s; Σ models {s[f'day_{mode}_model_sum']['median']:.2f} s, "
                  f"Σ tests {s[f'day_{mode}_test_sum']['median']:.2f} s"
                  + (f"; incl. closing DuckDB {s[f'day_{mode}_close']['median']:.2f} s"
                     if f"day_{mode}_close" in s else "")))
    print(row(f"python -c 'import dbt.cli.main, dbt.adapters.duckdb' (CLI fixed cost), n={s['dbt_import']['n']}",
              s["dbt_import"], "part of every CLI invocation's start"))
    print(row("one-time in-process dbt parse (warm worker start)", {"median": s["warm_parse_s"],
              "min": s["warm_parse_s"], "max": s["warm_parse_s"]}, "paid once per worker"))
    if "peer_compute" in s:
        print(row(f"**Peer**: Handbook baseline (pandas) read + {s['peer_features']} features, n={s['peer_compute']['n']}",
                  s["peer_compute"], f"process wall {s['peer_process']['median']:.2f} s, CPU "
                  f"{s['peer_cpu']['median']:.1f} s; read "
                  f"{s['peer_read_s']['median']:.2f}, weekend/night {s['peer_weekend_night_s']['median']:.2f}, "
                  f"customer {s['peer_customer_s']['median']:.2f}, terminal {s['peer_terminal_s']['median']:.2f}"))
        print(f"\nratio peer / platform full build (medians): wall {s['ratio_peer_to_platform_full']:.2f}x, "
              f"CPU time {s['ratio_peer_to_platform_full_cpu']:.2f}x")
    print("full build, dbt model times (median s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(s["full_model_times"].items(), key=lambda kv: -kv[1])))
    print("peak RSS (MB): " + ", ".join(f"{k} {v:,.0f}" for k, v in s["peak_rss_mb"].items())
          + f"; this process {r['self_peak_rss_mb']:,.0f}")
    full_ok = s["full_total"]["median"] <= 30
    print(f"\ntarget full build ≤ 30 s: {'MET' if full_ok else 'MISSED'} (median {s['full_total']['median']:.2f} s)")
    for mode in ("cli_build", "cli_run", "warm_run", "warm_build"):
        tot = s[f"day_{mode}_total"]["median"]
        print(f"target day ≤ 3 s, {labels[mode].split(',')[0]}: {'MET' if tot <= 3 else 'MISSED'} "
              f"(ingest + rebuild median {tot:.2f} s)")


if __name__ == "__main__":
    main()
