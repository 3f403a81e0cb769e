"""Event time cannot poison the online store (issue 18, part 1).

* A request whose ``event_time`` is ahead of the server clock by more than the skew, older than the
  maximum age, or later than the store's late grace is a 422 naming ``event_time`` and the bound,
  counted by bound, and leaves every history untouched (embedded and Redis alike).
* History is pruned relative to ``min(event time, server clock)``, never to a client time ahead of
  the server clock.
* A property test (hypothesis) interleaves out-of-order, late, tied and out-of-bound events and checks
  that the store accepts exactly the events the rules accept, and that every accepted transaction's
  online features equal the offline recomputation (``tests/feature_oracle.py``) over the events
  accepted before it.

Reverted fix: without the bounds the year-2036 request is a 200 and the merchant's next transaction
sees ``merchant_txn_count_30d == 1`` (its history pruned away); without the clamp the event a month
back is pruned by the 2-day-ahead event and the count test below sees one event fewer; without the
late bound the property test finds late events whose features miss pruned history. (Each checked
once by reverting the change in ``online_store.py`` / the Lua script.)
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import polars as pl
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlp_platform.features.spec import default_spec
from mlp_platform.serving.app import create_app
from mlp_platform.serving.online_store import EmbeddedBackend, EventTimeRejected, OnlineFeatureStore
from mlp_platform.serving.online_store_redis import RedisBackend
from mlp_platform.serving.store_url import store_from_url
from tests import test_serving_api
from tests.feature_oracle import compute_features
from tests.featurelib import feature_mismatches
from tests.test_online_store import redis_server_process
from tests.test_serving_api import AUTH, make_service, txn

platform = test_serving_api.platform  # the module-scoped fixture: a registry with a champion

SPEC = default_spec()
STREAM_FEATURES = [f.name for v in SPEC.views if v.mode in ("streaming", "on_demand") for f in v.features]
INT_FEATURES = {f.name for f in SPEC.features if f.dtype == "int"}
EPOCH = dt.datetime(1970, 1, 1)
#: The server clock of the API tests: an hour after the first test transaction (txn(i) is at 12:00 + i s).
NOW = dt.datetime(2026, 3, 1, 13, 0)


def _seconds(t: dt.datetime) -> float:
    return (t - EPOCH).total_seconds()


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    with redis_server_process(tmp_path_factory.mktemp("redis")) as (_, port):
        yield port


@pytest.fixture(params=["embedded", "redis", "redis-py"])  # redis-py: redis.asyncio on the event loop
def store_url(request, tmp_path) -> str:
    if request.param == "embedded":
        return f"embedded://{tmp_path / 'store'}"
    port = request.getfixturevalue("redis_port")
    client = "&async_client=redis-py" if request.param == "redis-py" else ""
    return f"redis://127.0.0.1:{port}/0?timeout=5{client}&prefix=etb{uuid.uuid4().hex[:8]}"


@pytest.fixture
def api(platform, tmp_path, store_url):
    service = make_service(platform, tmp_path, store_url=store_url, clock=lambda: _seconds(NOW),
                           event_time_max_age_s=37 * 86_400)
    with TestClient(create_app(service)) as client:
        client.service = service
        yield client


def _merchant_count(body_or_record: dict) -> int:
    return body_or_record["record"]["features"]["merchant_txn_count_30d"]


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_far_future_event_time_is_a_422_and_does_not_prune_anyones_history(platform, tmp_path, store_url,
                                                                            fast_path):
    service = make_service(platform, tmp_path, store_url=store_url, clock=lambda: _seconds(NOW),
                           event_time_max_age_s=37 * 86_400)
    with TestClient(create_app(service, fast_path=fast_path)) as client:
        for i in range(5):  # five transactions of merchant M0 (i % 7 == 0), customers C1..
            assert client.post("/v1/score", json=txn(7 * i, customer=f"C{i}"), headers=AUTH).status_code == 200
        attack = client.post("/v1/score", json=txn(99, event_time="2036-03-01T12:00:00", merchant_id="M0"),
                             headers=AUTH)
        assert attack.status_code == 422
        body = attack.json()
        assert body["fields"] == ["event_time"] and body["detail"][0]["field"] == "event_time"
        assert "ahead of the server clock" in body["detail"][0]["message"]
        assert "2026-03-01T13:05:00" in body["detail"][0]["message"]  # the bound: the clock plus 300 s
        after = client.post("/v1/score", json=txn(7 * 5, customer="C9"), headers=AUTH).json()
        trace = client.get(f"/v1/decisions/{after['decision_id']}", headers=AUTH).json()
        assert _merchant_count(trace) == 6  # the five before and itself: nothing was pruned
        metrics = client.get("/metrics").text
        assert 'mlp_event_time_rejected_total{bound="future"} 1.0' in metrics
        assert 'mlp_requests_total{endpoint="/v1/score",status="422"} 1.0' in metrics


def test_too_old_and_too_late_event_times_are_422s_naming_the_bound(api):
    assert api.post("/v1/score", json=txn(1800), headers=AUTH).status_code == 200  # 12:30
    old = api.post("/v1/score", json=txn(2, event_time="2026-01-01T12:00:00"), headers=AUTH)
    assert old.status_code == 422 and old.json()["fields"] == ["event_time"]
    assert "older than the maximum age" in old.json()["detail"][0]["message"]
    assert "2026-01-23T13:00:00" in old.json()["detail"][0]["message"]  # the clock minus 37 days
    late = api.post("/v1/score", json=txn(3, event_time="2026-03-01T11:00:00"), headers=AUTH)  # 90 min late
    assert late.status_code == 422 and late.json()["fields"] == ["event_time"]
    assert "older than the newest accepted event" in late.json()["detail"][0]["message"]
    # late within the grace: accepted, and counted where it falls (before the 12:30 one)
    within = api.post("/v1/score", json=txn(4, event_time="2026-03-01T11:45:00", customer="C1"), headers=AUTH)
    assert within.status_code == 200
    metrics = api.get("/metrics").text
    assert 'mlp_event_time_rejected_total{bound="too_old"} 1.0' in metrics
    assert 'mlp_event_time_rejected_total{bound="late"} 1.0' in metrics


def test_history_is_pruned_relative_to_the_server_clock_not_a_client_time_ahead_of_it(store_url) -> None:
    now = dt.datetime(2026, 3, 1, 12)
    store = store_from_url(store_url, max_future=dt.timedelta(days=10), clock=lambda: _seconds(now))
    try:
        def event(tid: str, t: dt.datetime) -> dict:
            return {"transaction_id": tid, "event_time": t, "customer_id": "C", "merchant_id": "M", "amount": 1.0}

        store.score_features(event("a", now - dt.timedelta(days=30) + dt.timedelta(minutes=30)))
        store.score_features(event("ahead", now + dt.timedelta(days=2)))  # within this store's skew
        on_time = store.score_features(event("b", now)).to_dict()
        # "a" is 29.5 days before "b": still in its 30-day window (pruned if "ahead" had set the cut)
        assert on_time["customer_txn_count_30d"] == 2 and on_time["merchant_txn_count_30d"] == 2
    finally:
        store.close()


# --- the property test ---------------------------------------------------------------------------------

GRACE = dt.timedelta(hours=1)
SKEW = dt.timedelta(minutes=5)

offsets = st.one_of(
    st.just("tie"),  # the previous event's time exactly
    st.integers(-80 * 60, 0).map(lambda s: dt.timedelta(seconds=s)),  # late (maybe beyond the grace)
    st.integers(0, 290).map(lambda s: dt.timedelta(seconds=s)),  # slightly ahead, within the skew
    st.integers(6 * 60, 400 * 86_400).map(lambda s: dt.timedelta(seconds=s)),  # ahead beyond the skew
    st.integers(2 * 3600, 45 * 86_400).map(lambda s: -dt.timedelta(seconds=s)),  # far too late
)
arrivals = st.lists(st.tuples(st.integers(0, 40 * 60), offsets, st.integers(0, 2), st.integers(0, 1),
                              st.sampled_from([1.0, 2.5, 40.0]), st.sampled_from(["D1", "D2", None])),
                    min_size=1, max_size=18)


def _check_interleaving(store_factory, steps) -> None:
    clock = [dt.datetime(2026, 3, 1, 12)]
    store = store_factory(lambda: _seconds(clock[0]))
    accepted: list[dict] = []
    watermark = None
    last_time = clock[0]
    try:
        for k, (advance, offset, customer, merchant, amount, device) in enumerate(steps):
            clock[0] += dt.timedelta(seconds=advance)
            now = clock[0]
            t = last_time if offset == "tie" else now + offset
            event = {"transaction_id": f"T{k:03d}", "event_time": t, "customer_id": f"C{customer}",
                     "merchant_id": f"M{merchant}", "amount": amount, "device_id": device}
            expected_ok = t <= now + SKEW and (watermark is None or t >= watermark - GRACE)
            try:
                got = store.score_features(event).to_dict()
            except EventTimeRejected as rejected:
                assert not expected_ok, f"event {k} at {t} (clock {now}) refused: {rejected}"
                continue
            assert expected_ok, f"event {k} at {t} (clock {now}, watermark {watermark}) accepted"
            last_time = t
            ref = min(t, now)
            watermark = ref if watermark is None else max(watermark, ref)
            accepted.append(event)
            frame = pl.DataFrame(accepted, schema={"transaction_id": pl.String, "event_time": pl.Datetime("us"),
                                                   "customer_id": pl.String, "merchant_id": pl.String,
                                                   "amount": pl.Float64, "device_id": pl.String})
            offline = compute_features(frame, pl.DataFrame({"transaction_id": [], "label": [], "label_time": []},
                                                           schema={"transaction_id": pl.String, "label": pl.Int64,
                                                                   "label_time": pl.Datetime("us")}),
                                       SPEC, label_delay_days=7).filter(pl.col("transaction_id") == event["transaction_id"])
            online = pl.DataFrame([{"transaction_id": event["transaction_id"],
                                    **{n: got[n] for n in STREAM_FEATURES}}],
                                  schema={"transaction_id": pl.String,
                                          **{n: pl.Int64 if n in INT_FEATURES else pl.Float64 for n in STREAM_FEATURES}})
            problems = feature_mismatches(online, offline.select("transaction_id", *STREAM_FEATURES),
                                          STREAM_FEATURES, INT_FEATURES)
            assert not problems, f"event {k} at {t}: " + "\n".join(problems)
    finally:
        store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=arrivals)
def test_interleaved_late_tied_and_out_of_bound_events_match_the_offline_recomputation_embedded(tmp_path, steps):
    _check_interleaving(lambda clock: OnlineFeatureStore(EmbeddedBackend(), late_grace=GRACE, max_future=SKEW,
                                                         clock=clock), steps)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=arrivals)
def test_interleaved_late_tied_and_out_of_bound_events_match_the_offline_recomputation_redis(redis_port, steps):
    def make(clock):
        backend = RedisBackend(f"redis://127.0.0.1:{redis_port}/0", prefix=f"prop:{uuid.uuid4().hex[:10]}", timeout=5)
        return OnlineFeatureStore(backend, late_grace=GRACE, max_future=SKEW, clock=clock)

    _check_interleaving(make, steps)
