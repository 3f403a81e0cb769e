"""The compiled stream kernel against the Python reference (parse_packed + compute_stream).

The kernel must give the same features with the same Python types (ints stay ints, -0.0 stays -0.0,
None stays None) for every packed history the store can read, hand anything outside the canonical
form back to the reference without touching the output, and raise where the reference raises.
End-to-end parity with the offline tables through the kernel is in test_online_parity.py.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlp_platform.features.spec import default_spec
from mlp_platform.serving import stream_kernel
from mlp_platform.serving.online_store import (
    _COUNT,
    _DISTINCT,
    _FIRST,
    _MAX,
    _MEAN,
    _RATIO,
    _SINCE_PREV,
    _SUM,
    NULL,
    SEP,
    StreamKernel,
    StreamPlan,
    check_stream_kernel,
    compile_spec,
    compute_stream,
    parse_packed,
    stream_kernel_for,
)

T = 1_780_000_000_000_000
HOUR, DAY = 3_600_000_000, 86_400_000_000
CUSTOMER = compile_spec(default_spec(), 3600)[0][0]

# A plan unlike the spec's: unsorted windows, two numeric columns, the ratio before its denominator
# (it then reads what the output held), a string column without features, max on a short window.
ODD = StreamPlan(
    name="odd", key="customer_id", lookback_us=30 * DAY, prune_us=31 * DAY,
    windows_us=(7 * DAY, HOUR, 30 * DAY), columns=("amount", "tip", "merchant_id", "channel"),
    numeric=(True, True, False, False), full=True,
    ops=((0, _RATIO, -1, "tip", 3), (1, _SUM, 1, 1, None), (2, _MAX, 1, 0, None), (3, _MEAN, 0, 0, None),
         (4, _COUNT, 2, -1, None), (5, _DISTINCT, 2, 2, None), (6, _FIRST, -1, 2, None),
         (7, _SINCE_PREV, -1, -1, None), (8, _MEAN, 2, 1, None), (9, _RATIO, -1, "amount", 3)),
)


@pytest.fixture(scope="module")
def module():
    mod = stream_kernel.load()
    assert mod is not None, "the stream kernel must build on this machine (C compiler and Python headers)"
    return mod


def reference(plan: StreamPlan, packed: str, tid: str, txn: dict, out: list) -> list:
    compute_stream(plan, T, txn, parse_packed(packed, T, tid, plan), out)
    return out


def same(a: list, b: list) -> bool:
    """Equal values and types: repr tells 1 from 1.0 and -0.0 from 0.0; NaN equals NaN."""
    return [repr(v) for v in a] == [repr(v) for v in b]


def test_the_spec_views_get_the_kernel(module) -> None:
    streams = compile_spec(default_spec(), 3600)[0]
    kernels = [stream_kernel_for(p) for p in streams]
    assert [k is not None for k in kernels] == [p.full for p in streams]
    assert any(p.full for p in streams) and not all(p.full for p in streams)  # customer full, merchant counts


@pytest.mark.parametrize("plan", [CUSTOMER, ODD], ids=lambda p: p.name)
def test_generated_histories_match_the_reference(module, plan) -> None:
    check_stream_kernel(StreamKernel(module, plan), plan, cases=3000, seed=11)


# -- property test over arbitrary histories ---------------------------------------------------------

_text = st.text(alphabet=st.sampled_from(["M", "1", "2", "é", "ü", " ", "-", "😀", "T"]), max_size=4)
_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-7, 1e22, 1.5, 2.5]),
    st.integers(-10**6, 10**6).map(float),
)
_delta = st.one_of(st.sampled_from([0, 1, HOUR - 1, HOUR, HOUR + 1, DAY, 7 * DAY, 7 * DAY + 1, 30 * DAY - 1]),
                   st.integers(0, 31 * DAY))
_event = st.tuples(_delta, st.sampled_from(["T5", "T50", "T4", "T6", "A", "é", "T5x"]),
                   st.one_of(st.none(), _number), st.one_of(st.none(), _number),
                   st.one_of(st.none(), _text), st.one_of(st.none(), _text))


def _pack(events: list, ncols: int) -> str:
    members = []
    for delta, tid, *payload in sorted(events, key=lambda e: (-e[0], e[1])):
        fields = [tid, str(T - delta)]
        for v in payload[:ncols]:
            fields.append(NULL if v is None else (repr(v) if isinstance(v, float) else v))
        members.append(SEP.join(fields))
    return SEP.join(members)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, max_size=40), tid=st.sampled_from(["T5", "T50", "é"]),
       amount=st.one_of(st.none(), _number), tip=st.one_of(st.none(), _number, st.integers(-3, 3)),
       merchant=st.one_of(st.none(), _text, st.integers(0, 3)), channel=st.one_of(st.none(), _text))
def test_arbitrary_histories_match_the_reference(module, events, tid, amount, tip, merchant, channel) -> None:
    txn = {"amount": amount, "tip": tip, "merchant_id": merchant, "channel": channel, "device_id": channel}
    for plan in (ODD, CUSTOMER):
        packed = _pack([(d, i, a, b, c, e) if plan is ODD else (d, i, a, c, e) for d, i, a, b, c, e in events],
                       len(plan.columns))
        kernel = StreamKernel(module, plan)
        n_out = 1 + max(op[0] for op in plan.ops)
        initial = [None] * n_out
        if plan is ODD:
            initial[3] = 2.0  # the ratio at 0 reads out[3] before the mean is written there
        expected = reference(plan, packed, tid, txn, list(initial))
        got = list(initial)
        assert kernel(packed, T, tid, txn, got)
        assert same(got, expected), (got, expected)


def test_long_histories_use_the_heap_and_match(module) -> None:
    rng = random.Random(3)
    events = [(rng.randrange(31 * DAY), f"T{i:05d}", rng.uniform(0, 500), None, f"M{rng.randrange(40)}",
               f"D{rng.randrange(3)}") for i in range(3000)]
    packed = _pack([(d, i, a, c, e) for d, i, a, _, c, e in events], 3)
    txn = {"amount": 12.5, "merchant_id": "M7", "device_id": "D9"}
    got = [None] * 32
    assert StreamKernel(module, CUSTOMER)(packed, T, "T99999", txn, got)
    expected = reference(CUSTOMER, packed, "T99999", txn, [None] * 32)
    assert same(got, expected)
    assert max(v for v in got if type(v) is int) > 2000  # not vacuous: the 30-day window holds most events


@pytest.mark.parametrize("mangle", [
    lambda f: f.__setitem__(1, "+" + f[1]),  # int() reads "+123"
    lambda f: f.__setitem__(1, f[1] + "_0"),  # and "12_0"
    lambda f: f.__setitem__(1, " " + f[1]),  # and " 123"
    lambda f: f.__setitem__(2, "1_000.5"),  # float() reads underscores
    lambda f: f.__setitem__(2, " 2.5"),  # and spaces
    lambda f: f.__setitem__(2, "nan"),  # and words
    lambda f: f.__setitem__(2, "-Infinity"),
    lambda f: f.append("extra"),  # a field count that is not whole events
], ids=["plus-time", "underscore-time", "space-time", "underscore-number", "space-number", "nan", "inf",
        "torn"])
def test_non_canonical_input_goes_to_the_reference_untouched(module, mangle) -> None:
    members = [SEP.join([f"T{i}", str(T - i * HOUR), "2.5", f"M{i % 2}", "D1"]) for i in range(1, 5)]
    fields = SEP.join(members).split(SEP)
    mangle(fields)
    packed = SEP.join(fields)
    txn = {"amount": 1.0, "merchant_id": "M1", "device_id": "D1"}
    out = ["untouched"] * 32
    assert StreamKernel(module, CUSTOMER)(packed, T, "T9", txn, out) is False
    assert out == ["untouched"] * 32
    # through compute_stream the snapshot still gets the reference's features (or its error)
    try:
        expected = reference(CUSTOMER, packed, "T9", txn, [None] * 32)
    except ValueError:
        with pytest.raises(ValueError):
            compute_stream(CUSTOMER, T, txn, ("P", packed, "T9", StreamKernel(module, CUSTOMER)), [None] * 32)
        return
    got = [None] * 32
    compute_stream(CUSTOMER, T, txn, ("P", packed, "T9", StreamKernel(module, CUSTOMER)), got)
    assert same(got, expected)
    if "nan" in packed:
        assert any(isinstance(v, float) and math.isnan(v) for v in got)


def test_transaction_values_are_converted_as_the_reference_does(module) -> None:
    packed = SEP.join([SEP.join(["T1", str(T - HOUR), "2.5", "7", "D1"])])
    kernel = StreamKernel(module, CUSTOMER)
    for txn in ({"amount": "3.25", "merchant_id": 7, "device_id": None},  # float("3.25"), str(7)
                {"amount": 4, "merchant_id": "7", "device_id": "D1"},
                {"amount": True, "merchant_id": None, "device_id": 1.5}):
        got, expected = [None] * 32, reference(CUSTOMER, packed, "T2", txn, [None] * 32)
        compute_stream(CUSTOMER, T, txn, ("P", packed, "T2", kernel), got)
        assert same(got, expected)
    for bad in ("abc", object()):  # the reference's error, not a guess
        txn = {"amount": bad, "merchant_id": "M", "device_id": "D"}
        with pytest.raises((ValueError, TypeError)) as expected_error:
            reference(CUSTOMER, packed, "T2", txn, [None] * 32)
        with pytest.raises(expected_error.type):
            kernel(packed, T, "T2", txn, [None] * 32)


def test_a_lone_surrogate_goes_to_the_reference(module) -> None:
    packed = SEP.join(["T1", str(T - HOUR), "2.5", "M1", "D1"])
    out = [None] * 32
    assert StreamKernel(module, CUSTOMER)(packed, T, "T\ud800", {"amount": 1.0}, out) is False
    assert StreamKernel(module, CUSTOMER)(packed, T, "T2", {"amount": 1.0, "merchant_id": "\ud800"}, out) is False
    assert out == [None] * 32


def test_a_plan_the_kernel_does_not_cover_is_refused(module) -> None:
    distinct_on_number = StreamPlan(
        name="x", key="k", lookback_us=DAY, prune_us=DAY, windows_us=(DAY,), columns=("amount",),
        numeric=(True,), full=True, ops=((0, _DISTINCT, 0, 0, None),))
    with pytest.raises(ValueError, match="not supported"):
        StreamKernel(module, distinct_on_number)
    assert stream_kernel_for(distinct_on_number) is None  # refused, logged: the reference serves


def test_switched_off_means_the_reference(monkeypatch) -> None:
    monkeypatch.setenv("MLP_STREAM_KERNEL", "0")
    assert stream_kernel.load() is None
    assert stream_kernel_for(CUSTOMER) is None
