"""Benchmark: several deciders in one scoring process (issue 19, part 4).

Not a test: it measures, on this machine, in one run:

* **credit decision with adverse-action reasons** at one connection: ``POST /v1/deciders/credit/decide``
  on the platform's service as deployed (``uvicorn --factory mlp_platform.serving.app:app_from_env``,
  the fraud decider beside it), split into answers with reasons (counter-offer, refer, decline) and
  approvals; against a **bare endpoint** doing the same job with nothing else (a minimal FastAPI app:
  the same request features, ``Booster.predict`` and ``pred_contrib`` for the top four, no
  validation, no log, no keys). Target: p99 within 10 ms.
* **counter-offer** at one connection: ``POST /v1/deciders/credit/counter-offer`` for refused
  applications (up to 16 candidate conditions scored in one call, every candidate logged); against
  the bare endpoint scoring a 16-row matrix. Target: p99 within 25 ms.
* **two deciders in one process**: fraud ``POST /v1/score`` p99 at one connection on a fraud-only
  process against a fraud + credit process (interleaved rounds, same registry): target within 10%;
  and on the fraud + credit process while the credit decider's champion is replaced (a new version
  promoted through its gates and hot-reloaded mid-run): the fraud p99 of that run against the
  same process's runs without a promotion.

The credit champion is trained on the synthetic applications (the German data is too small for a
model of realistic size), the fraud models as in ``bench_serving.py``. Rounds are interleaved across
the servers; medians over rounds (min-max) are reported. Every answer must be a 200.

    .venv/bin/python bench/bench_deciders.py [--rounds 5] [--requests 600] [--json out.json]

It works in a temporary directory (never ``data/``) and kills every server it starts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import Request  # module level: the bare app's annotation is resolved from these globals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import (  # noqa: E402 -- the shared bench machinery
    API_KEY,
    PY,
    RawConn,
    Server,
    Traffic,
    free_port,
    machine,
    post_bytes,
    register_models,
)

CREDIT_KEY = "bench-credit-key-0123"
ADMIN_KEY = "bench-admin-key-0123"


def bare_credit_app():
    """uvicorn factory of the bare credit endpoint (see the module docstring)."""
    import lightgbm as lgb
    from fastapi import FastAPI

    from mlp_platform.deciders.declaration import load_decider
    from mlp_platform.features.request import RequestFeaturizer

    decider = load_decider(Path(os.environ["MLP_DECIDERS_DIR"]), "credit")
    featurizer = RequestFeaturizer(decider.spec)
    booster = lgb.Booster(model_file=os.environ["BENCH_BARE_MODEL"])
    app = FastAPI()

    @app.post("/decide")
    async def decide(request: Request):
        values, _ = featurizer.row(await request.json())
        row = np.asarray([values], dtype=np.float64)
        score = float(booster.predict(row, num_threads=1)[0])
        contrib = booster.predict(row, pred_contrib=True, num_threads=1)[0][:-1]
        top = [featurizer.feature_names[i] for i in np.argsort(-contrib)[:4] if contrib[i] > 0]
        return {"score": score, "reasons": top}

    @app.post("/counter-offer")
    async def counter_offer(request: Request):
        body = await request.json()
        rows = []
        for k in range(16):
            modified = dict(body, requested_amount=body["requested_amount"] * (1 - 0.03 * k))
            rows.append(featurizer.row(modified)[0])
        scores = booster.predict(np.asarray(rows, dtype=np.float64), num_threads=1)
        return {"scores": scores.tolist()}

    @app.get("/ping")
    async def ping():
        return {"ok": True}

    return app


def applications(n: int, seed: int) -> list[dict]:
    from mlp_platform.data.credit_synthetic import CreditSyntheticConfig, generate_period

    apps, _ = generate_period(CreditSyntheticConfig(seed=seed, days=20, applications_per_day=max(50, n // 10)))
    rows = apps.head(n).to_dicts()
    out = []
    for i, r in enumerate(rows):
        r = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items() if v is not None}
        r["application_id"] = f"bench-{seed}-{i:06d}"
        out.append(r)
    return out


def timed_posts(port: int, path: str, bodies: list[bytes], key: str | None) -> tuple[list[float], list[dict]]:
    conn = RawConn(port)
    times, answers = [], []
    try:
        for body in bodies:
            extra = f"Authorization: Bearer {key}\r\n" if key else ""
            raw = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{extra}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            t0 = time.perf_counter_ns()
            status, out = conn.request(raw)
            times.append((time.perf_counter_ns() - t0) / 1000.0)
            if status != 200:
                raise RuntimeError(f"{path} on port {port}: {status} {out[:300]!r}")
            answers.append(json.loads(out))
    finally:
        conn.close()
    return times, answers


def fraud_latency(port: int, n: int, tag: str, seed: int) -> list[float]:
    traffic = Traffic(tag, seed, 5000, 1000)
    conn = RawConn(port)
    times = []
    try:
        for _ in range(n):
            raw = post_bytes(port, "/v1/score", json.dumps(traffic.next(), separators=(",", ":")).encode(), True)
            t0 = time.perf_counter_ns()
            status, out = conn.request(raw)
            times.append((time.perf_counter_ns() - t0) / 1000.0)
            if status != 200:
                raise RuntimeError(f"/v1/score on port {port}: {status} {out[:300]!r}")
    finally:
        conn.close()
    return times


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rng_text(values: list[float], digits: int = 0) -> str:
    return f"{med(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})" if values else "-"


def gated_credit(settings, credit, source: str):
    """A credit candidate trained, registered and gated (not yet promoted)."""
    from mlp_platform.application_lifecycle import (
        gate_application_candidate,
        load_application_data,
        train_application_candidate,
    )
    from mlp_platform.evaluation.cv_backtest import CVBacktestConfig

    candidate = train_application_candidate(settings, credit, load_application_data(settings, credit, source),
                                            CVBacktestConfig(n_splits=3, n_repeats=1, n_boot=50))
    return candidate, gate_application_candidate(settings, credit, candidate)


def promote_credit(settings, credit, candidate, gates) -> None:
    from mlp_platform.application_lifecycle import decide_application_candidate

    outcome = decide_application_candidate(settings, credit, candidate, gates, run_id="bench", actor="bench")
    if not outcome.promoted:
        raise RuntimeError(f"credit candidate refused: {outcome.reason}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=600, help="requests per server per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_deciders_"))
    os.environ["MLP_DATA_DIR"] = str(tmp / "data")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from mlp_platform.deciders.declaration import load_decider
    from mlp_platform.serving.routing import RoutingFile, RoutingState
    from mlp_platform.settings import load_settings

    settings = load_settings()
    print(f"workdir {tmp}", flush=True)
    v1, _v2, info = register_models(settings)
    RoutingFile(settings.routing_path).write(RoutingState(champion=v1, updated_by="bench"))
    credit = load_decider(settings.deciders_dir, "credit")
    t0 = time.perf_counter()
    champion, gates = gated_credit(settings, credit, "synthetic")
    promote_credit(settings, credit, champion, gates)
    print(f"credit champion v{champion.ref.version} ({champion.booster.num_trees()} trees) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    bare_model = tmp / "credit_bare.txt"
    champion.booster.save_model(str(bare_model))

    base_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    base_env["PATH"] = f"{Path(PY).parent}:{base_env.get('PATH', '')}"
    uvicorn = [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--workers", "1", "--no-access-log"]

    def service(name: str, deciders: str) -> Server:
        env = dict(base_env, MLP_API_KEYS=API_KEY, MLP_ADMIN_KEYS=ADMIN_KEY, MLP_SERVE_DECIDERS=deciders,
                   MLP_DECIDER_API_KEYS=f"credit:{CREDIT_KEY}", MLP_RELOAD_INTERVAL_S="2",
                   MLP_FEATURE_STORE_URL=f"embedded://{tmp / f'store_{name}'}",
                   MLP_DECISION_LOG_DIR=str(tmp / name / "decisions"))
        port = free_port()
        return Server(name, [*uvicorn, "--port", str(port), "--factory", "mlp_platform.serving.app:app_from_env"],
                      env, port, "/readyz", tmp / "logs" / f"{name}.log")

    fraud_only = service("fraud_only", "fraud")
    both = service("fraud_and_credit", "fraud,credit")
    port = free_port()
    bare = Server("bare_credit", [*uvicorn, "--port", str(port), "--app-dir", str(Path(__file__).parent),
                                  "--factory", "bench_deciders:bare_credit_app"],
                  dict(base_env, BENCH_BARE_MODEL=str(bare_model), MLP_DECIDERS_DIR=str(settings.deciders_dir)),
                  port, "/ping", tmp / "logs" / "bare.log")
    servers = [fraud_only, both, bare]
    results: dict = {"decide_reasons": [], "decide_approve": [], "decide_all": [], "bare_decide": [],
                     "offer": [], "bare_offer": [], "fraud_only": [], "fraud_both": [], "fraud_during_promotion": [],
                     "offer_candidates": [], "decisions": {}}
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
        startup = {s.name: round(s.startup_s, 2) for s in servers}
        print(f"servers ready: {startup}", flush=True)
        n = args.requests
        for r in range(args.rounds):
            bodies = [json.dumps(a, separators=(",", ":")).encode() for a in applications(n, seed=100 + r)]
            # warm-up, then the measured passes, in an order that changes every round
            timed_posts(both.port, "/v1/deciders/credit/decide", bodies[:50], CREDIT_KEY)
            timed_posts(bare.port, "/decide", bodies[:50], None)
            passes = ["credit", "bare", "fraud_only", "fraud_both"]
            for step in (passes if r % 2 == 0 else passes[::-1]):
                if step == "credit":
                    times, answers = timed_posts(both.port, "/v1/deciders/credit/decide", bodies, CREDIT_KEY)
                    results["decide_all"].append(pct(times, 99))
                    with_reasons = [t for t, a in zip(times, answers, strict=True) if a["reasons"]]
                    approve = [t for t, a in zip(times, answers, strict=True) if a["decision"] == "approve"]
                    results["decide_reasons"].append(pct(with_reasons, 99))
                    results["decide_approve"].append(pct(approve, 99))
                    for a in answers:
                        results["decisions"][a["decision"]] = results["decisions"].get(a["decision"], 0) + 1
                    refused = [b for b, a in zip(bodies, answers, strict=True) if a["decision"] != "approve"]
                    times, offers = timed_posts(both.port, "/v1/deciders/credit/counter-offer", refused, CREDIT_KEY)
                    results["offer"].append(pct(times, 99))
                    results["offer_candidates"].append(max(len(o["candidates"]) for o in offers))
                    times, _ = timed_posts(bare.port, "/counter-offer", refused, None)
                    results["bare_offer"].append(pct(times, 99))
                elif step == "bare":
                    times, _ = timed_posts(bare.port, "/decide", bodies, None)
                    results["bare_decide"].append(pct(times, 99))
                else:
                    target = fraud_only if step == "fraud_only" else both
                    results[step].append(pct(fraud_latency(target.port, n, f"{step}{r}", r), 99))
            print(f"round {r + 1}/{args.rounds}: credit reasons p99 {results['decide_reasons'][-1]:.0f} us, "
                  f"offer p99 {results['offer'][-1]:.0f} us, fraud p99 {results['fraud_only'][-1]:.0f} / "
                  f"{results['fraud_both'][-1]:.0f} us", flush=True)

        # fraud latency on the two-decider process while credit's champion is replaced and hot-reloaded:
        # the new version is trained and gated before (its training is not the process's load), then
        # promoted (the alias moves) 1 s into a 3000-request run; the process's reload thread (every
        # 2 s, MLP_RELOAD_INTERVAL_S) loads it; against a same-length run without a promotion
        candidate, gates = gated_credit(settings, credit, "german")
        done = {}

        def promote_mid_run() -> None:
            time.sleep(1.0)
            t = time.perf_counter()
            promote_credit(settings, credit, candidate, gates)
            while time.perf_counter() - t < 30:
                conn = RawConn(both.port)
                status, body = conn.request(b"GET /v1/deciders HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                conn.close()
                if json.loads(body)["credit"]["version"] == candidate.ref.version:
                    break
                time.sleep(0.05)
            done.update(version=candidate.ref.version, status=status, seconds=time.perf_counter() - t)

        quiet = fraud_latency(both.port, 3000, "quiet", 98)
        worker = threading.Thread(target=promote_mid_run)
        worker.start()
        during = fraud_latency(both.port, 3000, "promo", 99)
        worker.join()
        results["fraud_quiet_run"] = [pct(quiet, 99)]
        results["fraud_during_promotion"] = [pct(during, 99)]
        results["fraud_during_promotion_max"] = [max(during)]
        conn = RawConn(both.port)
        status, body = conn.request(b"GET /v1/deciders HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        conn.close()
        served = json.loads(body)["credit"]["version"]
        if served != done.get("version") or done.get("status") != 200:
            raise RuntimeError(f"the promoted credit version {done} is not served ({served})")
    finally:
        for s in servers:
            s.stop()

    summary = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(), "startup_s": startup,
        "fraud_models": info, "credit_trees": champion.booster.num_trees(), "rounds": args.rounds,
        "requests_per_round": args.requests, "decisions": results["decisions"],
        "p99_us": {k: v for k, v in results.items() if k not in ("decisions", "offer_candidates")},
        "max_candidates": max(results["offer_candidates"]),
        "promotion": {"version": done.get("version"), "seconds": round(done.get("seconds", 0), 1),
                      "fraud_requests_during": len(during)},
    }
    p = summary["p99_us"]
    ratio_fraud = [b / a for a, b in zip(p["fraud_only"], p["fraud_both"], strict=True)]
    ratio_credit = [a / b for a, b in zip(p["decide_reasons"], p["bare_decide"], strict=True)]
    summary["ratios"] = {"fraud_both_over_fraud_only_p99": ratio_fraud, "credit_over_bare_p99": ratio_credit,
                         "fraud_during_promotion_over_quiet_p99": p["fraud_during_promotion"][0] / p["fraud_quiet_run"][0]}
    lines = [
        f"credit decide, with reasons   p99 µs  {rng_text(p['decide_reasons'])}   (target 10,000)",
        f"credit decide, approvals      p99 µs  {rng_text(p['decide_approve'])}",
        f"bare credit endpoint          p99 µs  {rng_text(p['bare_decide'])}",
        f"credit / bare (with reasons)  ratio   {rng_text(ratio_credit, 2)}",
        f"counter-offer ({summary['max_candidates']} candidates) p99 µs  {rng_text(p['offer'])}   (target 25,000)",
        f"bare 16-row scoring           p99 µs  {rng_text(p['bare_offer'])}",
        f"fraud p99, fraud-only process  µs     {rng_text(p['fraud_only'])}",
        f"fraud p99, fraud+credit        µs     {rng_text(p['fraud_both'])}",
        f"fraud+credit / fraud-only      ratio  {rng_text(ratio_fraud, 3)}   (target <= 1.10)",
        f"fraud p99 over 3000 requests while credit is promoted and reloaded µs {p['fraud_during_promotion'][0]:,.0f}"
        f" (max {p['fraud_during_promotion_max'][0]:,.0f}; promoted to served in {summary['promotion']['seconds']} s);"
        f" without a promotion {p['fraud_quiet_run'][0]:,.0f}: "
        f"{summary['ratios']['fraud_during_promotion_over_quiet_p99']:.2f}x",
        f"decisions {results['decisions']}",
    ]
    print("\n".join(lines))
    summary["table"] = lines
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
