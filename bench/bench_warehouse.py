"""Benchmark: writing rows to the Snowflake warehouse (the fakesnow server of the production profile,
over Snowflake's HTTP protocol), ours against the connector's own way, in one run.

Not a test. The same frame (a day of ``scoring.batch_scores``-shaped rows: 10 columns, strings,
floats, a date, timestamps) inserted into a fresh table each time:

* **ours**: :meth:`SnowflakeSession.insert` -- multi-row ``insert ... values (?, ...), (...)`` with
  bound parameters, ``INSERT_CHUNK_ROWS`` rows per statement (also at 250 and 4,000 rows);
* **peer**: ``cursor.executemany`` of a one-row ``insert`` (the connector binds the rows as an array;
  the library's own batch path, qmark parameters);
* **A/A**: ours twice, to read the noise band.

``write_pandas`` (PUT to a stage + COPY INTO: the bulk path on a real account) is not measured: the
fakesnow server does not implement PUT. Medians of ``--repeats`` interleaved rounds.

    .venv/bin/python bench/bench_warehouse.py [--rows 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from mlp_platform.data import warehouse as wh  # noqa: E402
from mlp_platform.local_stack import fakesnow_server  # noqa: E402


def frame(n: int) -> pl.DataFrame:
    t0 = dt.datetime(2026, 2, 14)
    return pl.DataFrame({
        "transaction_id": [f"T{i:08d}" for i in range(n)], "customer_id": [f"C{i % 500}" for i in range(n)],
        "merchant_id": [f"M{i % 200}" for i in range(n)],
        "event_time": [t0 + dt.timedelta(seconds=i) for i in range(n)],
        "day": [t0.date()] * n, "score": [(i % 997) / 997 for i in range(n)],
        "decision": [("approve", "review", "decline")[i % 3] for i in range(n)],
        "model_version": ["7"] * n, "model_sha256": ["a" * 64] * n, "scored_at": [t0] * n})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = frame(args.rows)
    print(f"date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; nproc {os.cpu_count()}; {platform.platform()}; "
          f"load average {os.getloadavg()}; {args.rows} rows x {rows.width} columns")
    with tempfile.TemporaryDirectory() as tmp, fakesnow_server(Path(tmp)) as stack:
        env = stack.env
        warehouse = wh.SnowflakeWarehouse(env["SNOWFLAKE_ACCOUNT"], env["SNOWFLAKE_USER"], env["SNOWFLAKE_PASSWORD"],
                                          env["SNOWFLAKE_DATABASE"], host=env["SNOWFLAKE_HOST"],
                                          port=int(env["SNOWFLAKE_PORT"]), protocol="http")
        counter = iter(range(10_000))

        def fresh(session) -> str:
            table = f"bench.t{next(counter)}"
            session.ensure_table(table, rows)
            return table

        def ours(chunk: int):
            def run(session, table):
                wh.INSERT_CHUNK_ROWS = chunk
                session.insert(table, rows)
            return run

        def peer(session, table):
            cols = ", ".join(rows.columns)
            marks = ", ".join("?" * rows.width)
            session.con.cursor().executemany(f"insert into {table} ({cols}) values ({marks})", list(rows.iter_rows()))

        sides = {"ours (1000/statement)": ours(1000), "ours A/A twin": ours(1000), "ours (250/statement)": ours(250),
                 "ours (4000/statement)": ours(4000), "peer: executemany": peer}
        times: dict[str, list[float]] = {k: [] for k in sides}
        default_chunk = wh.INSERT_CHUNK_ROWS
        with warehouse.session() as session:
            for _ in range(args.repeats):
                for name, run in sides.items():
                    table = fresh(session)
                    started = time.perf_counter()
                    run(session, table)
                    times[name].append(time.perf_counter() - started)
                    n = session.fetchall(f"select count(*) from {table}")[0][0]
                    assert n == args.rows, (name, n)
        wh.INSERT_CHUNK_ROWS = default_chunk
    base = statistics.median(times["ours (1000/statement)"])
    print(f"\n{'side':<26} {'median s':>9} {'min':>7} {'max':>7} {'ms/row':>7} {'/ ours':>7}")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"{name:<26} {m:9.2f} {min(t):7.2f} {max(t):7.2f} {1000 * m / args.rows:7.3f} {m / base:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
