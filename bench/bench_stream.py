"""Benchmark: what the decision shipper costs the scoring service, and how long a decision takes to
reach the stream and the warehouse.

Not a test. One scoring service (``uvicorn --factory mlp_platform.serving.app:app_from_env``, the
embedded store, a ~300-tree champion, no shadow), one real ``nats-server`` with JetStream file storage,
one shipper process (``mlp stream ship``, as the Deployment's sidecar runs it), all on 127.0.0.1; load
from ``wrk`` (bench_serving's generated transactions; its asyncio client without wrk).

* **Cost (paired)**: ``--rounds`` rounds; each round three bursts of ``--burst`` s on the same service,
  in an order rotated every round: *on* (the shipper running and shipping during the burst), *off*
  (the shipper stopped with SIGSTOP for the burst) and *off2* (the same as off: the A/A pair that
  shows the run's own noise). Between bursts the shipper is let run until it has shipped everything
  (its position equals the log's last record), so no burst pays for another's backlog. Reported:
  the median over rounds of on/off and of off2/off (the noise band), with quartiles.
* **Lag**: during an extra ``--lag-seconds`` of load at ``--lag-connections`` connections, the time
  from a decision (the record's ``time``, written when the service decided) to its message stored in
  the stream (the stream's own timestamp), per decision: median, p99, max. And to the warehouse:
  ``load_decisions_from_stream`` run in a loop during the same load, each record's time from decision
  to the end of the load that committed it.

    .venv/bin/python bench/bench_stream.py [--rounds 9] [--burst 3] [--connections 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from bench_serving import (  # noqa: E402
    API_KEY,
    PY,
    Server,
    Target,
    free_port,
    group_cpu_s,
    load_run,
    machine,
    register_models,
)

CUSTOMERS, MERCHANTS = 5000, 1000


def pid_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def log_head(directory: Path) -> int:
    """The last seq in the log (a scan of complete lines; the service is the writer)."""
    from mlp_platform.serving.decision_log_reader import read_after

    return read_after(directory, None).last_seq


def shipped_seq(directory: Path) -> int:
    from mlp_platform.streaming.decision_stream import load_position

    return load_position(directory).last_seq


def wait_caught_up(directory: Path, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    head = log_head(directory)
    while shipped_seq(directory) < head:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"the shipper did not catch up (head {head}, shipped {shipped_seq(directory)})")
        time.sleep(0.05)
    return time.perf_counter() - t0


def stream_lags(url: str, stream: str, after: int) -> tuple[list[float], int]:
    """(decision -> stored in the stream) seconds of every record after stream sequence ``after`` (the
    stream's timestamp of its message minus the record's decision time), and the last sequence."""
    from mlp_platform.streaming.decision_stream import StreamConfig, read_stream

    messages, _, last = asyncio.run(read_stream(StreamConfig(url=url, stream=stream), after))
    lags = [m.stored_at - dt.datetime.fromisoformat(json.loads(line)["time"]).timestamp()
            for m in messages for line in m.data.splitlines()]  # a message carries up to 256 records
    return lags, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--burst", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--lag-seconds", type=float, default=20.0)
    ap.add_argument("--lag-connections", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    info = machine()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    print(f"{date}; nproc={info['nproc']}; {info['cpu']}; load avg {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    os.environ["MLP_DATA_DIR"] = str(tmp / "data")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLP_FAST_SCORER_CACHE"] = str(tmp / "fast_scorer_cache")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.serving.routing import RoutingFile, RoutingState
    from mlp_platform.settings import load_settings
    from tests.natslib import NatsServer

    settings = load_settings()
    v1, _v2, _ = register_models(settings)
    RoutingFile(settings.routing_path).write(RoutingState(champion=v1, updated_by="bench"))
    registry_loader(settings)(v1)  # compile once
    nats = NatsServer(tmp / "jetstream").start()
    stream = "BENCH"
    decisions = tmp / "decisions"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PATH=f"{Path(PY).parent}:{env.get('PATH', '')}", MLP_API_KEYS=API_KEY,
               MLP_FEATURE_STORE_URL=f"embedded://{tmp / 'store'}", MLP_DECISION_LOG_DIR=str(decisions),
               MLP_DECISION_STREAM_URL=nats.url, MLP_DECISION_STREAM=stream)
    port = free_port()
    service = Server("service", [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--workers", "1", "--no-access-log",
                                 "--port", str(port), "--factory", "mlp_platform.serving.app:app_from_env"],
                     env, port, "/readyz", tmp / "logs" / "service.log")
    shipper = Server("shipper", [str(Path(PY).parent / "mlp"), "stream", "ship"], env, 0, "", tmp / "logs" / "shipper.log")
    target = Target("service", "full path", "full", service, "/v1/score", shadow=False)
    report: dict = {"date": date, "machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        service.start()
        service.wait_ready()
        shipper.start()
        load_run(target, args.connections, 2.0, 10**9, "warm", 1, CUSTOMERS, MERCHANTS, tmp)  # warm-up
        wait_caught_up(decisions)
        rates: dict[str, list[float]] = {"on": [], "off": [], "off2": []}
        errors = 0
        cpu_us: dict[str, list[float]] = {"service": [], "shipper": [], "nats": []}
        kinds = ["on", "off", "off2"]
        for rnd in range(args.rounds):
            order = kinds[rnd % 3:] + kinds[:rnd % 3]
            for i, kind in enumerate(order):
                if kind != "on":
                    os.killpg(shipper.proc.pid, signal.SIGSTOP)
                cpu0 = (group_cpu_s(service.proc.pid), group_cpu_s(shipper.proc.pid), pid_cpu_s(nats.proc.pid))
                r = load_run(target, args.connections, args.burst, 10**9, f"r{rnd}{kind}", 1000 * rnd + i,
                             CUSTOMERS, MERCHANTS, tmp)
                if kind != "on":
                    os.killpg(shipper.proc.pid, signal.SIGCONT)
                wait_caught_up(decisions)
                if kind == "on":  # CPU per decision of the burst, its shipping included (caught up)
                    cpu1 = (group_cpu_s(service.proc.pid), group_cpu_s(shipper.proc.pid), pid_cpu_s(nats.proc.pid))
                    for name, a, b in zip(("service", "shipper", "nats"), cpu0, cpu1, strict=True):
                        cpu_us[name].append((b - a) / max(r["requests"], 1) * 1e6)
                rates[kind].append(r["requests"] / (r["duration_us"] / 1e6))
                errors += r["errors"]
            print(f"round {rnd}: " + ", ".join(f"{k} {rates[k][-1]:.0f}/s" for k in kinds), flush=True)
        on_off = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]
        aa = [a / b for a, b in zip(rates["off2"], rates["off"], strict=True)]
        report["cost"] = {"rates": rates, "on_over_off": on_off, "off2_over_off": aa, "errors": errors,
                          "on_over_off_quartiles": quartiles(on_off), "aa_quartiles": quartiles(aa)}
        q1, m, q3 = quartiles(on_off)
        a1, am, a3 = quartiles(aa)
        print(f"throughput with the shipper / without: median {m:.3f} (q1 {q1:.3f}, q3 {q3:.3f}); "
              f"A/A off2/off: {am:.3f} ({a1:.3f}-{a3:.3f}); errors {errors}")
        report["cpu_us_per_decision"] = {k: statistics.median(v) for k, v in cpu_us.items()}
        c = report["cpu_us_per_decision"]
        print(f"CPU per decision (median of the 'on' bursts): service {c['service']:.0f} µs, shipper "
              f"{c['shipper']:.1f} µs ({c['shipper'] / c['service']:.1%}), nats-server {c['nats']:.1f} µs "
              f"({c['nats'] / c['service']:.1%})")

        # lag: load at a moderate rate, the loader in a loop beside it
        from mlp_platform.batch.decisions import load_decisions_from_stream
        from mlp_platform.streaming.decision_stream import StreamConfig

        after = stream_lags(nats.url, stream, 0)[1]
        loaded_lags: list[float] = []
        stop = threading.Event()
        config = StreamConfig(url=nats.url, stream=stream)
        # the warehouse loader starts after what the cost rounds left (one load takes it all first)
        load_decisions_from_stream(settings, config)

        def loader() -> None:
            import duckdb

            while not stop.is_set():
                with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
                    before = con.execute("select coalesce(max(seq), -1) from monitoring.decisions").fetchone()[0]
                load_decisions_from_stream(settings, config)
                done = time.time()
                with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
                    rows = con.execute("select decided_at from monitoring.decisions where seq > ?", [before]).fetchall()
                loaded_lags.extend(done - t.replace(tzinfo=dt.UTC).timestamp() for (t,) in rows)
                time.sleep(0.5)

        thread = threading.Thread(target=loader)
        thread.start()
        r = load_run(target, args.lag_connections, args.lag_seconds, 10**9, "lag", 77, CUSTOMERS, MERCHANTS, tmp)
        wait_caught_up(decisions)
        time.sleep(1.5)
        stop.set()
        thread.join()
        lags, _ = stream_lags(nats.url, stream, after)
        arr, wh = np.asarray(lags) * 1000, np.asarray(loaded_lags) * 1000
        report["lag"] = {"rate_per_s": r["requests"] / (r["duration_us"] / 1e6), "n": len(arr),
                         "stream_ms": {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
                                       "max": float(arr.max())},
                         "warehouse_n": len(wh),
                         "warehouse_ms": {"p50": float(np.percentile(wh, 50)), "p99": float(np.percentile(wh, 99)),
                                          "max": float(wh.max())} if len(wh) else None}
        print(f"lag at {report['lag']['rate_per_s']:.0f} decisions/s: to the stream p50 "
              f"{report['lag']['stream_ms']['p50']:.1f} ms, p99 {report['lag']['stream_ms']['p99']:.1f} ms "
              f"(n={len(arr)}); to the warehouse (loader every 0.5 s) p50 {np.percentile(wh, 50):.0f} ms, "
              f"p99 {np.percentile(wh, 99):.0f} ms (n={len(wh)})")
    finally:
        for proc in (shipper, service):
            with contextlib.suppress(Exception):
                if proc.proc is not None:
                    os.killpg(proc.proc.pid, signal.SIGCONT)
                proc.stop()
        nats.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
