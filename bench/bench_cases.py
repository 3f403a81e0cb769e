"""Benchmark: the review queue's two limits (issue 21).

1. **Opening cases must not slow the scoring path** (target: under 3%, paired, full path). Three
   scoring services in one process on one registered model, in two phases: every decision in the
   review band (the worst case: each one opens a case), then the review bound at the 95th
   percentile of the scores (about 5% open a case; the share is measured): ``cases`` (with the review desk: the opener's queue and
   its background inserts into SQLite), ``plain`` and ``plain_twin`` (no desk: the A/A pair that
   gives the noise band). Each round sends the same ``--requests`` transactions to each, 32 at a
   time, through the whole ASGI app (authentication, validation, features, model, policy, reasons,
   the durable decision log) via httpx's ASGI transport, in rotating order; throughput ratios per
   round, medians over ``--rounds``.
2. **100,000 open cases: the first page of a queue within 50 ms**: SQLite and Postgres (pgserver),
   ``--cases`` open cases of one decider (and as many of another); the first page (50) and a page
   deep in the queue by keyset, median (p95) of 50 calls each.

    .venv/bin/python bench/bench_cases.py [--rounds 7] [--requests 1500] [--cases 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # tests/test_serving_api imports its siblings by name


def _page_timings(store, decider: str, rounds: int = 50) -> dict[str, float]:
    first, deep = [], []
    page = store.queue([decider], limit=50)
    mid = store.queue([decider], limit=500, after=(page[-1].decided_at, page[-1].case_id))
    cursor = (mid[-1].decided_at, mid[-1].case_id)
    for _ in range(rounds):
        t = time.perf_counter()
        store.queue([decider], limit=50)
        first.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        store.queue([decider], limit=50, after=cursor)
        deep.append((time.perf_counter() - t) * 1000)
    q = lambda v: (statistics.median(v), statistics.quantiles(v, n=20)[18])  # noqa: E731
    return {"first_ms": q(first)[0], "first_p95_ms": q(first)[1], "deep_ms": q(deep)[0], "deep_p95_ms": q(deep)[1]}


def queue_limits(n_cases: int, tmp: Path) -> dict[str, dict]:
    from mlp_platform.review.cases import CaseStore, case_from_decision

    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    evidence = {"features": {f"f{i}": i * 0.5 for i in range(32)}, "reasons": [{"code": "R1", "feature": "f1"}] * 3}
    out: dict[str, dict] = {}
    urls = {"sqlite": f"sqlite:///{tmp / 'cases.db'}"}
    server = None
    try:
        import pgserver

        server = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
        server.psql("create database review;")
        urls["postgres"] = f"postgresql+psycopg2://postgres@/review?host={server.get_uri().split('host=')[1]}"
    except ImportError:
        print("pgserver not installed: SQLite only")
    try:
        for engine, url in urls.items():
            store = CaseStore.from_url(url)
            started = time.perf_counter()
            for decider in ("fraud", "credit"):
                rows = []
                for i in range(n_cases):
                    record = {"decision_id": f"{decider}-{i:07d}", "decision": "review",
                              "time": (t0 + dt.timedelta(seconds=i * 7)).isoformat(), "transaction_id": f"t{i}",
                              "score": 0.5, "model_version": "3", **evidence}
                    rows.append(case_from_decision(record, decider))
                    if len(rows) == 5000:
                        store.open_many(rows)
                        rows = []
                store.open_many(rows)
            fill_s = time.perf_counter() - started
            out[engine] = {"cases_per_decider": n_cases, "fill_s": fill_s, **_page_timings(store, "fraud")}
            print(f"{engine:8s}: {n_cases:,} open cases per decider (filled in {fill_s:.0f} s); first page "
                  f"{out[engine]['first_ms']:.2f} ms (p95 {out[engine]['first_p95_ms']:.2f}), deep page "
                  f"{out[engine]['deep_ms']:.2f} ms (p95 {out[engine]['deep_p95_ms']:.2f}); target < 50 ms")
            store.engine.dispose()
    finally:
        if server is not None:
            server.cleanup()
    return out


async def _burst(client, requests: list[dict], auth: dict, concurrency: int = 32) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(body):
        async with sem:
            r = await client.post("/v1/score", json=body, headers=auth)
            assert r.status_code == 200, r.text

    started = time.perf_counter()
    await asyncio.gather(*(one(b) for b in requests))
    return len(requests) / (time.perf_counter() - started)


def scoring_overhead(rounds: int, n_requests: int, tmp: Path) -> dict:
    import httpx

    from mlp_platform.review.api import build_desk
    from mlp_platform.serving.app import create_app
    from mlp_platform.serving.routing import RoutingFile, RoutingState
    from mlp_platform.settings import load_settings
    from tests.test_serving_api import AUTH, make_service, register, txn

    os.environ["MLP_DATA_DIR"] = str(tmp / "data")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    settings = load_settings()
    v1 = register(settings, 1)
    RoutingFile(settings.routing_path).write(RoutingState(champion=v1, updated_by="bench"))
    platform = {"settings": settings, "v1": v1}
    apps, services = {}, {}
    for name in ("cases", "plain", "plain_twin"):
        service = make_service(platform, tmp / name)
        service.config = dataclasses.replace(service.config, threshold_overrides=(("review", 0.0), ("decline", 1.0)))
        desk = None
        if name == "cases":
            serving = dataclasses.replace(settings.serving, reviewer_keys=(("bench", ("fraud",), "rev-bench"),))
            desk = build_desk(dataclasses.replace(settings, serving=serving,
                                                  review_database_url=f"sqlite:///{tmp / 'overhead.db'}"),
                              service=service, metrics_registry=service.metrics.registry)
        apps[name], services[name] = create_app(service, desk=desk), service

    def set_review_threshold(bound: float) -> None:
        for service in services.values():
            service.config = dataclasses.replace(service.config, threshold_overrides=(("review", bound), ("decline", 1.0)))

    async def run() -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        clients = {name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
                   for name, app in apps.items()}
        order = list(apps)
        offset = 200
        try:
            for name in order:  # warm-up (compiled model, caches); event times before the rounds'
                await _burst(clients[name], [txn(i, customer=f"W{i % 50}", amount=600.0) for i in range(200)], AUTH)
            def transactions(start: int) -> list[dict]:  # amounts spread widely: the scores are too
                return [txn(start + i, customer=f"C{i % 200}", amount=5.0 + (i * 37) % 3000) for i in range(n_requests)]

            scores = sorted([(await clients["plain_twin"].post("/v1/score", json=b, headers=AUTH)).json()["score"]
                             for b in transactions(offset)])
            offset += n_requests
            bound = next((v for v in scores[int(0.95 * len(scores)):] if v > scores[int(0.95 * len(scores)) - 1]), 1.0)
            phases = {"every decision opens a case": 0.0, "the top 5% of scores open a case": bound}
            for phase, bound in phases.items():
                set_review_threshold(bound)
                rates: dict[str, list[float]] = {name: [] for name in apps}
                services["cases"].case_opener.flush()
                opened_before = services["cases"].case_opener.opened
                for r in range(rounds):
                    batch = transactions(offset)
                    offset += n_requests
                    for name in order[r % 3:] + order[:r % 3]:
                        rates[name].append(await _burst(clients[name], batch, AUTH))
                    print(f"{phase}, round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
                await asyncio.to_thread(services["cases"].case_opener.flush)
                share = (services["cases"].case_opener.opened - opened_before) / (rounds * n_requests)
                print(f"{phase}: {share:.1%} of the decisions opened a case")
                out[phase] = {**rates, "case_share": [share]}
        finally:
            for c in clients.values():
                await c.aclose()
        return out

    phases = asyncio.run(run())
    services["cases"].case_opener.flush()
    summary: dict = {}
    for phase, rates in phases.items():
        share = rates.pop("case_share")[0]
        ratio = [c / p for c, p in zip(rates["cases"], rates["plain"], strict=True)]
        twin = [t / p for t, p in zip(rates["plain_twin"], rates["plain"], strict=True)]
        summary[phase] = {"rates": rates, "case_share": share, "cases_over_plain": statistics.median(ratio),
                          "cases_over_plain_range": (min(ratio), max(ratio)),
                          "twin_over_plain": statistics.median(twin), "twin_over_plain_range": (min(twin), max(twin))}
        print(f"{phase}: throughput with cases / without {statistics.median(ratio):.3f} ({min(ratio):.3f}-"
              f"{max(ratio):.3f}); A/A twin {statistics.median(twin):.3f} ({min(twin):.3f}-{max(twin):.3f}); "
              "target: cost under 3%")
    for service in services.values():
        asyncio.run(service.close())
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cases_") as tmp:
        out = {"when": dt.datetime.now(dt.UTC).isoformat(), "load_average_start": os.getloadavg()[0],
               "overhead": scoring_overhead(args.rounds, args.requests, Path(tmp)),
               "queue": queue_limits(args.cases, Path(tmp))}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
