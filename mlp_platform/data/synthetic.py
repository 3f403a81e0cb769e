"""Deterministic synthetic card-transaction generator: the platform's embedded default data source.

This module owns the simulated world and nothing else: it emits frames in the canonical
``TRANSACTION_SCHEMA`` / ``LABEL_SCHEMA`` (see :mod:`mlp_platform.data.schema`) one day at a time.

The world has three layers, each drawn from its own random stream so that they never disturb
each other:

* **World** (from ``seed``, ``n_customers`` and ``n_merchants`` only): customers with spending
  habits (home country, amount level, preferred channels and hours, a few usual merchants per
  channel, one or two usual devices, a daily transaction rate) and merchants / terminals with a
  4-digit MCC, a channel, a country, a pricing currency and an amount scale.
* **Genuine traffic** (per day, from ``(seed, day ordinal)``): Poisson counts per customer with a
  weekly cycle, a daily cycle with quiet nights, habitual merchants / devices / amounts.
* **Fraud** (per calendar week, from ``(seed, week ordinal)``): scenarios scheduled for the
  whole timeline -- compromised terminals (with later hits on the exposed cards), stolen-card
  bursts, account takeovers, large-amount anomalies. A scenario may span several weeks; all its
  transactions are materialised at once, so any single day is consistent with every other day
  whichever order days are generated in.

Labels: every fraudulent transaction gets a ``label=1`` row whose ``label_time`` is a realistic
reporting delay after the event; about 0.1% of genuine transactions are disputed and confirmed
genuine (``label=0``); all other genuine transactions have no label row.

Drift: from ``SyntheticConfig.drift_start`` on, the enabled ``drift_kinds`` change the world:
``new_fraud_pattern`` adds card-testing campaigns (scenario ``"new_pattern"``: bursts of tiny
amounts at e-commerce merchants of MCC 5815), ``amount_inflation`` multiplies amounts by 1.3 and
``merchant_mix_shift`` moves traffic to other categories, merchants and towards e-commerce. Days
before ``drift_start`` are identical to the same config without drift.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl

from mlp_platform.data.schema import LABEL_SCHEMA, TRANSACTION_SCHEMA

__all__ = [
    "DRIFT_KINDS",
    "FRAUD_SCENARIOS",
    "GENERATED_CHANNELS",
    "NEW_PATTERN_SCENARIO",
    "SyntheticConfig",
    "generate_day",
    "generate_period",
    "iter_days",
]

DRIFT_KINDS: tuple[str, ...] = ("new_fraud_pattern", "amount_inflation", "merchant_mix_shift")
NEW_PATTERN_SCENARIO = "new_pattern"
#: Values of ``fraud_scenario`` for ``label=1`` rows (the last one only after drift).
FRAUD_SCENARIOS: tuple[str, ...] = (
    "compromised_terminal",
    "stolen_card",
    "account_takeover",
    "large_amount",
    NEW_PATTERN_SCENARIO,
)
_SC_TERMINAL, _SC_STOLEN, _SC_ATO, _SC_LARGE, _SC_NEW = range(5)

#: Channels this generator emits (``schema.CHANNELS`` minus ``"unknown"``), index = channel code.
GENERATED_CHANNELS: tuple[str, ...] = ("pos", "ecom", "atm", "moto")
_POS, _ECOM, _ATM, _MOTO = range(4)

_DAY_S = 86_400
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
#: Random-stream tags: world, genuine day, fraud week, drift day.
_TAG_WORLD, _TAG_DAY, _TAG_FRAUD, _TAG_DRIFT = 1, 2, 3, 4
#: Fraud scenarios start in their week and end at most this many weeks later (enforced).
_LOOKBACK_WEEKS = 7

# --- geography -------------------------------------------------------------------------------
_COUNTRIES: tuple[str, ...] = (
    "DE", "FR", "NL", "AT", "BE", "ES", "IT", "PL", "CH", "GB", "US", "RO", "BR", "NG", "TR", "CN",
)  # fmt: skip
_CURRENCIES: tuple[str, ...] = ("EUR", "PLN", "CHF", "GBP", "USD", "RON", "BRL", "NGN", "TRY", "CNY")
#: Units of each currency per EUR (amount scales are defined in EUR).
_FX = np.array([1.0, 4.3, 0.95, 0.85, 1.08, 4.97, 5.9, 1650.0, 35.0, 7.8])
_COUNTRY_CURRENCY = np.array([0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
_HOME_P = np.array([0.80, 0.04, 0.04, 0.05, 0.0, 0.02, 0.02, 0.03] + [0.0] * 8)
_POS_MERCHANT_COUNTRY_P = np.array([0.70, 0.05, 0.04, 0.06, 0.02, 0.04, 0.04, 0.02, 0.02, 0.01] + [0.0] * 6)
_ECOM_MERCHANT_COUNTRY_P = np.array(
    [0.50, 0.05, 0.10, 0.03, 0.02, 0.03, 0.03, 0.02, 0.02, 0.10, 0.10] + [0.0] * 5
)
#: Where fraudsters operate from (none of them is a home country).
_FRAUD_COUNTRY_P = np.array([0.0] * 9 + [0.10, 0.15, 0.20, 0.15, 0.15, 0.15, 0.10])
_TRAVEL_COUNTRY_P = _POS_MERCHANT_COUNTRY_P

# --- merchant categories: mcc, amount scale (EUR), traffic share before / after mix shift,
# channel probabilities (pos, ecom, atm, moto), fraud attractiveness ---------------------------
_CATEGORIES: tuple[tuple[str, float, float, float, tuple[float, float, float, float], float], ...] = (
    ("5411", 38.0, 0.20, 0.09, (1.0, 0.0, 0.0, 0.0), 0.5),  # grocery
    ("5812", 32.0, 0.09, 0.06, (0.9, 0.1, 0.0, 0.0), 0.5),  # restaurants
    ("5814", 11.0, 0.08, 0.08, (0.8, 0.2, 0.0, 0.0), 0.3),  # fast food
    ("5541", 55.0, 0.07, 0.04, (1.0, 0.0, 0.0, 0.0), 1.0),  # fuel
    ("5912", 21.0, 0.05, 0.04, (0.85, 0.15, 0.0, 0.0), 0.5),  # pharmacy
    ("5311", 68.0, 0.05, 0.03, (0.7, 0.3, 0.0, 0.0), 2.0),  # department stores
    ("5651", 62.0, 0.06, 0.06, (0.5, 0.5, 0.0, 0.0), 2.0),  # clothing
    ("5732", 190.0, 0.04, 0.08, (0.4, 0.6, 0.0, 0.0), 6.0),  # electronics
    ("5944", 260.0, 0.01, 0.01, (0.8, 0.2, 0.0, 0.0), 6.0),  # jewellery
    ("4121", 19.0, 0.04, 0.12, (0.2, 0.8, 0.0, 0.0), 0.5),  # taxi / ride hailing
    ("5815", 9.0, 0.05, 0.12, (0.0, 1.0, 0.0, 0.0), 3.0),  # digital goods
    ("5999", 42.0, 0.08, 0.12, (0.3, 0.7, 0.0, 0.0), 3.0),  # marketplaces / misc retail
    ("4511", 290.0, 0.02, 0.03, (0.0, 0.9, 0.0, 0.1), 2.0),  # airlines
    ("7011", 165.0, 0.02, 0.03, (0.4, 0.5, 0.0, 0.1), 1.5),  # hotels
    ("6011", 110.0, 0.08, 0.04, (0.0, 0.0, 1.0, 0.0), 1.0),  # ATM cash
    ("5964", 58.0, 0.02, 0.01, (0.0, 0.0, 0.0, 1.0), 1.0),  # direct marketing / catalogue
    ("4814", 36.0, 0.02, 0.02, (0.0, 0.6, 0.0, 0.4), 1.0),  # telecom
)
_MCC: tuple[str, ...] = tuple(c[0] for c in _CATEGORIES)
_CAT_SCALE = np.array([c[1] for c in _CATEGORIES])
_CAT_SHARE = np.array([c[2] for c in _CATEGORIES])
_CAT_SHARE_SHIFTED = np.array([c[3] for c in _CATEGORIES])
_CAT_CHANNEL_P = np.array([c[4] for c in _CATEGORIES])
_CAT_RISK = np.array([c[5] for c in _CATEGORIES])
_CARD_TESTING_MCC = "5815"
#: Merchants that always exist, so every channel (and the card-testing category) is populated.
_FORCED_MERCHANTS: tuple[tuple[str, int], ...] = (
    ("5411", _POS), ("6011", _ATM), ("5815", _ECOM), ("5964", _MOTO), ("5999", _ECOM), ("5541", _POS),
)  # fmt: skip
_MIN_MERCHANTS = len(_FORCED_MERCHANTS)

# --- time cycles -----------------------------------------------------------------------------
#: Relative traffic per weekday (Monday first).
_WEEKDAY_FACTOR = np.array([0.92, 0.95, 1.0, 1.03, 1.18, 1.12, 0.80])
#: Relative genuine traffic per hour of day (quiet nights, evening peak).
_HOUR_WEIGHTS = np.array(
    [0.6, 0.35, 0.2, 0.15, 0.15, 0.3, 0.9, 2.0, 3.5, 4.5, 5.0, 5.5,
     6.5, 6.0, 5.5, 5.5, 6.0, 6.5, 7.0, 6.5, 5.0, 3.8, 2.5, 1.3]
)  # fmt: skip
_HOUR_CUM = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
#: Fraudsters keep odd hours: a much flatter profile.
_FRAUD_HOUR_WEIGHTS = np.sqrt(_HOUR_WEIGHTS) + 0.8
_FRAUD_HOUR_CUM = np.cumsum(_FRAUD_HOUR_WEIGHTS) / _FRAUD_HOUR_WEIGHTS.sum()

# --- behaviour parameters --------------------------------------------------------------------
_USUAL_PER_CHANNEL = 3
_BASE_CHANNEL_P = np.array([0.56, 0.30, 0.09, 0.05])
_SHIFTED_CHANNEL_FACTOR = np.array([0.75, 1.6, 0.8, 1.0])
_SHIFTED_USUAL_FACTOR = 0.55
_INFLATION = 1.3
_DISPUTE_RATE = 0.001
#: Fraud scenario frequencies per 500 customers (scaled with the customer count).
_PER_CUSTOMERS = 500.0
_STOLEN_PER_WEEK = 6.0
_ATO_PER_WEEK = 4.0
_LARGE_PER_WEEK = 6.0
_TERMINALS_PER_WEEK = 0.6
_CARD_TESTING_CAMPAIGNS_PER_DAY = 2.0
_NEW_DEVICE_LOW, _NEW_DEVICE_HIGH = 5_000_000, 10_000_000


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the simulated world. The world itself depends on ``seed``, ``n_customers``
    and ``n_merchants`` only; ``start_date`` / ``days`` bound the days that may be generated."""

    seed: int = 7
    start_date: datetime.date = datetime.date(2026, 1, 1)
    days: int = 60  # length of the simulated world
    n_customers: int = 500
    n_merchants: int = 200
    drift_start: datetime.date | None = None  # the drift switch: world changes from this date
    drift_kinds: tuple[str, ...] = DRIFT_KINDS

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if self.n_customers < 1:
            raise ValueError(f"n_customers must be >= 1, got {self.n_customers}")
        if self.n_merchants < _MIN_MERCHANTS:
            raise ValueError(f"n_merchants must be >= {_MIN_MERCHANTS}, got {self.n_merchants}")
        unknown = set(self.drift_kinds) - set(DRIFT_KINDS)
        if unknown:
            raise ValueError(f"unknown drift kinds {sorted(unknown)}; expected a subset of {DRIFT_KINDS}")

    @property
    def end_date(self) -> datetime.date:
        """Last day of the simulated world (inclusive)."""
        return self.start_date + datetime.timedelta(days=self.days - 1)

    def drift_active(self, day: datetime.date) -> frozenset[str]:
        """Drift kinds in effect on ``day`` (empty before ``drift_start`` or without drift)."""
        if self.drift_start is None or day < self.drift_start:
            return frozenset()
        return frozenset(self.drift_kinds)


# =============================================================================================
# The world
# =============================================================================================


class _Pool:
    """Weighted pool of merchants; ``pick`` maps uniforms in [0, 1) to merchant indices."""

    def __init__(self, merchants: np.ndarray, weights: np.ndarray) -> None:
        self.merchants = merchants
        self.cum = np.cumsum(weights)

    def pick(self, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.cum, u * self.cum[-1], side="right")
        return self.merchants[np.minimum(pos, self.merchants.size - 1)]


@dataclass(frozen=True, eq=False)
class _World:
    customer_ids: pl.Series
    merchant_ids: pl.Series
    cust_home: np.ndarray  # country code
    cust_level: np.ndarray  # amount multiplier (lognormal)
    cust_rate: np.ndarray  # transactions per day
    cust_p_usual: np.ndarray  # probability of shopping at a usual merchant
    cust_peak_hour: np.ndarray
    cust_channel_cum: np.ndarray  # (n, 4) cumulative channel preference
    cust_channel_cum_shifted: np.ndarray
    cust_usual: np.ndarray  # (n, 4, K) usual merchants per channel
    cust_devices: np.ndarray  # (n, 2) device numbers
    cust_n_devices: np.ndarray  # 1 or 2
    merch_category: np.ndarray
    merch_channel: np.ndarray
    merch_country: np.ndarray
    merch_currency: np.ndarray
    merch_scale: np.ndarray  # typical amount in EUR
    channel_pools: tuple[_Pool, ...]  # genuine random choice per channel
    channel_pools_shifted: tuple[_Pool, ...]
    risky_pools: tuple[_Pool, ...]  # fraudsters' choice per channel
    terminal_pool: _Pool  # terminals worth compromising (pos and atm)
    card_testing_merchants: np.ndarray

    @property
    def n_customers(self) -> int:
        return self.cust_home.size


@functools.lru_cache(maxsize=8)
def _world(seed: int, n_customers: int, n_merchants: int) -> _World:
    rng = np.random.default_rng([seed, _TAG_WORLD])
    n_cat = len(_CATEGORIES)

    # Merchants / terminals.
    n_forced = len(_FORCED_MERCHANTS)
    cat_p = _CAT_SHARE**0.6 / (_CAT_SHARE**0.6).sum()
    category = np.concatenate(
        [[_MCC.index(m) for m, _ in _FORCED_MERCHANTS], rng.choice(n_cat, n_merchants - n_forced, p=cat_p)]
    )
    u = rng.random(n_merchants)
    channel = (u[:, None] >= np.cumsum(_CAT_CHANNEL_P[category], axis=1)[:, :-1]).sum(axis=1)
    channel[:n_forced] = [c for _, c in _FORCED_MERCHANTS]
    remote = (channel == _ECOM) | (channel == _MOTO)
    country = np.where(
        remote,
        rng.choice(len(_COUNTRIES), n_merchants, p=_ECOM_MERCHANT_COUNTRY_P),
        rng.choice(len(_COUNTRIES), n_merchants, p=_POS_MERCHANT_COUNTRY_P),
    )
    local_currency = _COUNTRY_CURRENCY[country]
    currency = np.where(remote & (rng.random(n_merchants) < 0.5), 0, local_currency)
    scale = _CAT_SCALE[category] * rng.lognormal(0.0, 0.3, n_merchants)
    popularity = rng.lognormal(0.0, 1.0, n_merchants)
    per_cat = np.bincount(category, minlength=n_cat)
    pop_base = popularity * _CAT_SHARE[category] / per_cat[category]
    pop_shifted = (
        popularity * rng.lognormal(0.0, 0.8, n_merchants) * _CAT_SHARE_SHIFTED[category] / per_cat[category]
    )
    risk = popularity**0.5 * _CAT_RISK[category]

    def pools(weights: np.ndarray) -> tuple[_Pool, ...]:
        return tuple(_Pool(np.flatnonzero(channel == c), weights[channel == c]) for c in range(4))

    terminals = np.flatnonzero((channel == _POS) | (channel == _ATM))

    # Customers.
    home = rng.choice(len(_COUNTRIES), n_customers, p=_HOME_P)
    level = rng.lognormal(0.0, 0.45, n_customers)
    rate = np.clip(rng.gamma(2.0, 1.0, n_customers), 0.05, 12.0)
    p_usual = rng.beta(7.0, 3.0, n_customers)
    peak = np.clip(rng.normal(15.0, 3.0, n_customers), 8.0, 21.0)
    chan_p = rng.dirichlet(_BASE_CHANNEL_P * 15.0, n_customers)
    chan_p_shifted = chan_p * _SHIFTED_CHANNEL_FACTOR
    chan_p_shifted /= chan_p_shifted.sum(axis=1, keepdims=True)
    n_devices = 1 + (rng.random(n_customers) < 0.45)
    devices = np.arange(2 * n_customers, dtype=np.int64).reshape(n_customers, 2)

    # Usual merchants: popular ones, strongly preferring the home country for card-present.
    usual = np.empty((n_customers, 4, _USUAL_PER_CHANNEL), dtype=np.int64)
    u_usual = rng.random((n_customers, 4, _USUAL_PER_CHANNEL))
    for c in range(4):
        merchants = np.flatnonzero(channel == c)
        for h in np.unique(home):
            rows = np.flatnonzero(home == h)
            bonus = 10.0 if c in (_POS, _ATM) else 3.0
            w = pop_base[merchants] * np.where(country[merchants] == h, bonus, 1.0)
            usual[rows, c, :] = _Pool(merchants, w).pick(u_usual[rows, c, :])

    return _World(
        customer_ids=pl.Series("customer_id", [f"C{i:06d}" for i in range(n_customers)], pl.String),
        merchant_ids=pl.Series("merchant_id", [f"M{i:05d}" for i in range(n_merchants)], pl.String),
        cust_home=home,
        cust_level=level,
        cust_rate=rate,
        cust_p_usual=p_usual,
        cust_peak_hour=peak,
        cust_channel_cum=np.cumsum(chan_p, axis=1),
        cust_channel_cum_shifted=np.cumsum(chan_p_shifted, axis=1),
        cust_usual=usual,
        cust_devices=devices,
        cust_n_devices=n_devices,
        merch_category=category,
        merch_channel=channel,
        merch_country=country,
        merch_currency=currency,
        merch_scale=scale,
        channel_pools=pools(pop_base),
        channel_pools_shifted=pools(pop_shifted),
        risky_pools=pools(risk),
        terminal_pool=_Pool(terminals, pop_base[terminals]),
        card_testing_merchants=np.flatnonzero(
            (category == _MCC.index(_CARD_TESTING_MCC)) & (channel == _ECOM)
        ),
    )


# =============================================================================================
# Event batches: parallel numpy arrays, one entry per transaction
# =============================================================================================

_FIELDS: tuple[tuple[str, type], ...] = (
    ("t", np.int64),  # event time, seconds since the epoch
    ("cust", np.int64),
    ("merch", np.int64),
    ("amount", np.float64),  # EUR, before inflation / currency conversion / rounding
    ("country", np.int64),
    ("device", np.int64),  # -1 = null
    ("label", np.int8),  # -1 = no label row, 0 = disputed genuine, 1 = fraud
    ("delay", np.int64),  # label delay in seconds
    ("scenario", np.int8),  # -1 = none
)
_Batch = dict[str, np.ndarray]


def _batch(**columns: np.ndarray | int) -> _Batch:
    sizes = [np.size(v) for v in columns.values() if np.ndim(v) > 0]
    n = max(sizes) if sizes else 1
    defaults: dict[str, int] = {"device": -1, "label": -1, "delay": 0, "scenario": -1}
    out: _Batch = {}
    for name, dtype in _FIELDS:
        value = columns.get(name, defaults.get(name))
        if value is None:
            raise KeyError(name)
        out[name] = np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()
    return out


def _concat(batches: list[_Batch]) -> _Batch:
    return {name: np.concatenate([b[name] for b in batches]) for name, _ in _FIELDS}


def _day_start_s(ordinal: int) -> int:
    return (ordinal - _EPOCH_ORDINAL) * _DAY_S


def _seconds_of_day(rng: np.random.Generator, n: int, hour_cum: np.ndarray) -> np.ndarray:
    hour = np.minimum(np.searchsorted(hour_cum, rng.random(n), side="right"), 23)
    return hour * 3600 + rng.integers(0, 3600, n)


def _group_offsets(sizes: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Cumulative offset of each event within its group (groups of ``sizes`` >= 1 events)."""
    starts = np.cumsum(sizes) - sizes
    gaps = gaps.copy()
    gaps[starts] = 0
    cum = np.cumsum(gaps)
    return cum - np.repeat(cum[starts], sizes)


def _new_devices(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(_NEW_DEVICE_LOW, _NEW_DEVICE_HIGH, n)


def _fraud_delays(rng: np.random.Generator, n: int) -> np.ndarray:
    """Reporting delay of fraud: lognormal, median 3 days, long tail capped at 60 days."""
    delay = rng.lognormal(np.log(3 * _DAY_S), 1.1, n)
    return np.clip(delay, 2 * 3600, 60 * _DAY_S).astype(np.int64)


def _pick_by_channel(pools: tuple[_Pool, ...], channel: np.ndarray, u: np.ndarray) -> np.ndarray:
    merchant = np.empty(channel.size, dtype=np.int64)
    for c in range(4):
        sel = channel == c
        if sel.any():
            merchant[sel] = pools[c].pick(u[sel])
    return merchant


def _remote_country(world: _World, merch: np.ndarray, remote_country: np.ndarray) -> np.ndarray:
    """Card-present: the merchant's country; card-not-present: where the shopper is."""
    card_present = np.isin(world.merch_channel[merch], (_POS, _ATM))
    return np.where(card_present, world.merch_country[merch], remote_country)


# --- genuine traffic -------------------------------------------------------------------------


def _genuine_day(world: _World, seed: int, ordinal: int, weekday: int, mix_shift: bool) -> _Batch:
    rng = np.random.default_rng([seed, _TAG_DAY, ordinal])
    counts = rng.poisson(world.cust_rate * _WEEKDAY_FACTOR[weekday])
    cust = np.repeat(np.arange(world.n_customers), counts)
    n = cust.size
    # Draw every random number up front, in a fixed order, so drift changes choices, not streams.
    u_channel, u_usual, u_pick, u_mix, u_dev, u_new_dev, u_travel, u_dispute = rng.random((8, n))
    k_usual = rng.integers(0, _USUAL_PER_CHANNEL, n)
    hour_global = np.minimum(np.searchsorted(_HOUR_CUM, rng.random(n), side="right"), 23)
    hour_habit = np.floor(world.cust_peak_hour[cust] + rng.normal(0.0, 2.0, n)).astype(np.int64) % 24
    second_in_hour = rng.integers(0, 3600, n)
    amount_noise = rng.lognormal(0.0, 0.5, n)
    travel_country = rng.choice(len(_COUNTRIES), n, p=_TRAVEL_COUNTRY_P)
    new_device = _new_devices(rng, n)
    dispute_delay = np.clip(rng.lognormal(np.log(18 * _DAY_S), 0.5, n), 2 * _DAY_S, 60 * _DAY_S)

    channel_cum = world.cust_channel_cum_shifted if mix_shift else world.cust_channel_cum
    pools = world.channel_pools_shifted if mix_shift else world.channel_pools
    p_usual = world.cust_p_usual[cust] * (_SHIFTED_USUAL_FACTOR if mix_shift else 1.0)

    channel = (u_channel[:, None] >= channel_cum[cust, :-1]).sum(axis=1)
    merch = np.where(
        u_usual < p_usual,
        world.cust_usual[cust, channel, k_usual],
        _pick_by_channel(pools, channel, u_pick),
    )
    hour = np.where(u_mix < 0.5, hour_global, hour_habit)
    t = _day_start_s(ordinal) + hour * 3600 + second_in_hour
    amount = world.merch_scale[merch] * world.cust_level[cust] * amount_noise

    home = world.cust_home[cust]
    country = _remote_country(world, merch, np.where(u_travel < 0.03, travel_country, home))
    second_device = ((u_dev < 0.5) & (world.cust_n_devices[cust] == 2)).astype(np.int64)
    usual_device = world.cust_devices[cust, second_device]
    device = np.select(
        [
            (channel == _ECOM) & (u_new_dev >= 0.02),  # otherwise a new phone / laptop
            channel == _ECOM,
            (channel == _POS) & (u_new_dev > 0.94),  # mobile wallet tap
        ],
        [usual_device, new_device, usual_device],
        default=-1,
    )
    disputed = u_dispute < _DISPUTE_RATE
    return _batch(
        t=t,
        cust=cust,
        merch=merch,
        amount=amount,
        country=country,
        device=device,
        label=np.where(disputed, 0, -1),
        delay=dispute_delay.astype(np.int64),
    )


# --- fraud scenarios -------------------------------------------------------------------------


def _stolen_cards(world: _World, rng: np.random.Generator, week_start: int, scale: float) -> _Batch:
    """A stolen card used in a burst within minutes (ties to the second happen) at unusual,
    fraud-attractive merchants, for higher amounts."""
    n_bursts = rng.poisson(_STOLEN_PER_WEEK * scale)
    cust = rng.integers(0, world.n_customers, n_bursts)
    start = (
        week_start + rng.integers(0, 7, n_bursts) * _DAY_S + _seconds_of_day(rng, n_bursts, _FRAUD_HOUR_CUM)
    )
    sizes = rng.integers(3, 9, n_bursts)
    n = int(sizes.sum())
    gaps = np.where(rng.random(n) < 0.25, 0, 1 + np.floor(rng.exponential(100.0, n))).astype(np.int64)
    t = np.repeat(start, sizes) + _group_offsets(sizes, gaps)
    card_cust = np.repeat(cust, sizes)
    channel = np.where(rng.random(n) < 0.55, _ECOM, _POS)
    merch = _pick_by_channel(world.risky_pools, channel, rng.random(n))
    shopper_country = np.where(
        rng.random(n_bursts) < 0.6,
        rng.choice(len(_COUNTRIES), n_bursts, p=_FRAUD_COUNTRY_P),
        world.cust_home[cust],
    )
    device = np.where(channel == _ECOM, np.repeat(_new_devices(rng, n_bursts), sizes), -1)
    return _batch(
        t=t,
        cust=card_cust,
        merch=merch,
        amount=world.merch_scale[merch] * rng.lognormal(np.log(1.8), 0.5, n),
        country=_remote_country(world, merch, np.repeat(shopper_country, sizes)),
        device=device,
        label=1,
        delay=_fraud_delays(rng, n),
        scenario=_SC_STOLEN,
    )


def _account_takeovers(world: _World, rng: np.random.Generator, week_start: int, scale: float) -> _Batch:
    """E-commerce purchases from a new device in a foreign country, spread over a few hours."""
    n_cases = rng.poisson(_ATO_PER_WEEK * scale)
    cust = rng.integers(0, world.n_customers, n_cases)
    start = week_start + rng.integers(0, 7, n_cases) * _DAY_S + _seconds_of_day(rng, n_cases, _FRAUD_HOUR_CUM)
    sizes = rng.integers(1, 5, n_cases)
    n = int(sizes.sum())
    gaps = (1 + np.floor(rng.exponential(25 * 60.0, n))).astype(np.int64)
    merch = world.risky_pools[_ECOM].pick(rng.random(n))
    return _batch(
        t=np.repeat(start, sizes) + _group_offsets(sizes, gaps),
        cust=np.repeat(cust, sizes),
        merch=merch,
        amount=world.merch_scale[merch] * rng.lognormal(np.log(1.6), 0.5, n),
        country=np.repeat(rng.choice(len(_COUNTRIES), n_cases, p=_FRAUD_COUNTRY_P), sizes),
        device=np.repeat(_new_devices(rng, n_cases), sizes),
        label=1,
        delay=_fraud_delays(rng, n),
        scenario=_SC_ATO,
    )


def _large_amounts(world: _World, rng: np.random.Generator, week_start: int, scale: float) -> _Batch:
    """A single transaction far above the customer's habit, at a usual or a high-value merchant."""
    n = rng.poisson(_LARGE_PER_WEEK * scale)
    cust = rng.integers(0, world.n_customers, n)
    t = week_start + rng.integers(0, 7, n) * _DAY_S + _seconds_of_day(rng, n, _HOUR_CUM)
    channel = np.where(rng.random(n) < 0.5, _ECOM, _POS)
    usual = world.cust_usual[cust, channel, rng.integers(0, _USUAL_PER_CHANNEL, n)]
    risky = _pick_by_channel(world.risky_pools, channel, rng.random(n))
    merch = np.where(rng.random(n) < 0.5, usual, risky)
    amount = world.cust_level[cust] * np.maximum(world.merch_scale[merch], 60.0) * rng.uniform(8.0, 25.0, n)
    usual_device = world.cust_devices[cust, 0]
    device = np.where(channel == _ECOM, np.where(rng.random(n) < 0.5, usual_device, _new_devices(rng, n)), -1)
    return _batch(
        t=t,
        cust=cust,
        merch=merch,
        amount=amount,
        country=_remote_country(world, merch, world.cust_home[cust]),
        device=device,
        label=1,
        delay=_fraud_delays(rng, n),
        scenario=_SC_LARGE,
    )


def _compromised_terminals(world: _World, rng: np.random.Generator, week_start: int, scale: float) -> _Batch:
    """A skimmed terminal for 1-3 weeks: fraudulent (cloned-card) transactions at the terminal
    itself, genuine transactions of exposed cards there, and later hits of those cards elsewhere."""
    batches: list[_Batch] = []
    for _ in range(rng.poisson(_TERMINALS_PER_WEEK * scale)):
        terminal = int(world.terminal_pool.pick(rng.random(1))[0])
        first_day = int(rng.integers(0, 7))
        duration = int(rng.integers(7, 22))
        window_start = week_start + first_day * _DAY_S

        # Cloned cards run through the terminal itself.
        per_day = rng.poisson(1.2, duration)
        n = int(per_day.sum())
        t = (
            window_start
            + np.repeat(np.arange(duration), per_day) * _DAY_S
            + _seconds_of_day(rng, n, _HOUR_CUM)
        )
        batches.append(
            _batch(
                t=t,
                cust=rng.integers(0, world.n_customers, n),
                merch=terminal,
                amount=world.merch_scale[terminal] * rng.lognormal(np.log(1.5), 0.4, n),
                country=world.merch_country[terminal],
                label=1,
                delay=_fraud_delays(rng, n),
                scenario=_SC_TERMINAL,
            )
        )

        # Exposed cards: regulars of the terminal first, then other customers passing by.
        n_victims = int(rng.integers(8, 25))
        regulars = np.flatnonzero((world.cust_usual == terminal).any(axis=(1, 2)))
        regulars = rng.permutation(regulars)[:n_victims]
        others = rng.integers(0, world.n_customers, n_victims - regulars.size)
        victims = np.concatenate([regulars, others]).astype(np.int64)
        exposure_day = rng.integers(0, duration, n_victims)
        exposure_t = window_start + exposure_day * _DAY_S + _seconds_of_day(rng, n_victims, _HOUR_CUM)
        batches.append(
            _batch(
                t=exposure_t,
                cust=victims,
                merch=terminal,
                amount=world.merch_scale[terminal]
                * world.cust_level[victims]
                * rng.lognormal(0, 0.5, n_victims),
                country=world.merch_country[terminal],
            )
        )

        # Later hits: the skimmed cards are cashed out 1-14 days after exposure.
        hit = rng.random(n_victims) < 0.55
        n_hit = int(hit.sum())
        sizes = rng.integers(1, 5, n_hit)
        m = int(sizes.sum())
        hit_start = (
            window_start
            + (exposure_day[hit] + rng.integers(1, 15, n_hit)) * _DAY_S
            + _seconds_of_day(rng, n_hit, _FRAUD_HOUR_CUM)
        )
        gaps = (1 + np.floor(rng.exponential(40 * 60.0, m))).astype(np.int64)
        channel = np.repeat(rng.choice(3, n_hit, p=[0.4, 0.3, 0.3]), sizes)  # pos, ecom, atm
        merch = _pick_by_channel(world.risky_pools, channel, rng.random(m))
        fraud_country = np.repeat(rng.choice(len(_COUNTRIES), n_hit, p=_FRAUD_COUNTRY_P), sizes)
        batches.append(
            _batch(
                t=np.repeat(hit_start, sizes) + _group_offsets(sizes, gaps),
                cust=np.repeat(victims[hit], sizes),
                merch=merch,
                amount=world.merch_scale[merch] * rng.lognormal(np.log(1.5), 0.5, m),
                country=_remote_country(world, merch, fraud_country),
                device=np.where(channel == _ECOM, np.repeat(_new_devices(rng, n_hit), sizes), -1),
                label=1,
                delay=_fraud_delays(rng, m),
                scenario=_SC_TERMINAL,
            )
        )
    return (
        _concat(batches)
        if batches
        else _batch(t=np.empty(0, np.int64), cust=0, merch=0, amount=0.0, country=0)
    )


@functools.lru_cache(maxsize=256)
def _fraud_week(seed: int, n_customers: int, n_merchants: int, week: int) -> _Batch:
    """All fraud scenarios starting in calendar week ``week`` (ordinals ``[7*week, 7*week+7)``),
    with every transaction they cause, also those falling in later weeks."""
    world = _world(seed, n_customers, n_merchants)
    rng = np.random.default_rng([seed, _TAG_FRAUD, week])
    week_start = _day_start_s(7 * week)
    scale = n_customers / _PER_CUSTOMERS
    batch = _concat(
        [
            _compromised_terminals(world, rng, week_start, scale),
            _stolen_cards(world, rng, week_start, scale),
            _account_takeovers(world, rng, week_start, scale),
            _large_amounts(world, rng, week_start, scale),
        ]
    )
    keep = batch["t"] < week_start + (_LOOKBACK_WEEKS + 1) * 7 * _DAY_S  # bound the lookback
    batch = {name: column[keep] for name, column in batch.items()}
    for column in batch.values():
        column.flags.writeable = False
    return batch


def _card_testing_day(world: _World, seed: int, ordinal: int) -> _Batch:
    """Drift scenario: card-testing campaigns -- many cards tried with tiny amounts within minutes
    at an e-commerce merchant of one category, from one attacker device."""
    rng = np.random.default_rng([seed, _TAG_DRIFT, ordinal])
    n_campaigns = rng.poisson(_CARD_TESTING_CAMPAIGNS_PER_DAY * world.n_customers / _PER_CUSTOMERS)
    merchant = rng.choice(world.card_testing_merchants, n_campaigns)
    start = _day_start_s(ordinal) + rng.integers(0, _DAY_S - 3600, n_campaigns)
    cards = rng.integers(4, 13, n_campaigns)
    n_cards = int(cards.sum())
    attempts = rng.integers(1, 4, n_cards)
    n = int(attempts.sum())
    campaign_of_tx = np.repeat(np.repeat(np.arange(n_campaigns), cards), attempts)
    offsets = rng.integers(0, 2700, n)  # within 45 minutes
    amount = rng.choice(np.array([0.01, 0.5, 1.0, 1.0, 1.5, 2.0, 2.99]), n)
    return _batch(
        t=start[campaign_of_tx] + offsets,
        cust=np.repeat(rng.integers(0, world.n_customers, n_cards), attempts),
        merch=merchant[campaign_of_tx],
        amount=amount,
        country=rng.choice(len(_COUNTRIES), n_campaigns, p=_FRAUD_COUNTRY_P)[campaign_of_tx],
        device=_new_devices(rng, n_campaigns)[campaign_of_tx],
        label=1,
        delay=_fraud_delays(rng, n),
        scenario=_SC_NEW,
    )


# =============================================================================================
# Public API
# =============================================================================================


def _day_events(config: SyntheticConfig, day: datetime.date) -> _Batch:
    world = _world(config.seed, config.n_customers, config.n_merchants)
    drift = config.drift_active(day)
    ordinal = day.toordinal()
    day_start = _day_start_s(ordinal)
    batches = [_genuine_day(world, config.seed, ordinal, day.weekday(), "merchant_mix_shift" in drift)]
    week = ordinal // 7
    for w in range(week - _LOOKBACK_WEEKS, week + 1):
        fraud = _fraud_week(config.seed, config.n_customers, config.n_merchants, w)
        on_day = (fraud["t"] >= day_start) & (fraud["t"] < day_start + _DAY_S)
        batches.append({name: column[on_day] for name, column in fraud.items()})
    if "new_fraud_pattern" in drift:
        batches.append(_card_testing_day(world, config.seed, ordinal))
    events = _concat(batches)
    order = np.argsort(events["t"], kind="stable")
    return {name: column[order] for name, column in events.items()}


def generate_day(config: SyntheticConfig, day: datetime.date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Transactions whose event_time falls on `day` (schema TRANSACTION_SCHEMA, exact dtypes and column order)
    and the labels of those transactions (schema LABEL_SCHEMA). Raises ValueError for a day outside
    [start_date, start_date + days)."""
    if isinstance(day, datetime.datetime):
        day = day.date()
    if not config.start_date <= day <= config.end_date:
        raise ValueError(f"{day} is outside the simulated world [{config.start_date}, {config.end_date}]")
    world = _world(config.seed, config.n_customers, config.n_merchants)
    ev = _day_events(config, day)
    n = ev["t"].size

    merch = ev["merch"]
    channel = world.merch_channel[merch]
    currency = world.merch_currency[merch]
    inflation = _INFLATION if "amount_inflation" in config.drift_active(day) else 1.0
    local = ev["amount"] * inflation * _FX[currency]
    amount = np.where(
        channel == _ATM,
        np.maximum(np.round(local / 10.0), 2.0) * 10.0,  # cash comes in tens
        np.maximum(np.round(local, 2), 0.01),
    )
    event_us = ev["t"] * 1_000_000
    transaction_id = pl.concat_str(
        [pl.lit(f"T{day:%Y%m%d}-"), pl.Series(np.arange(n)).cast(pl.String).str.zfill(7)]
    )
    device = pl.Series(ev["device"])
    frame = pl.DataFrame({"device": device}).with_columns(
        transaction_id=transaction_id,
        device_id=pl.when(pl.col("device") >= 0).then(
            pl.concat_str([pl.lit("D"), pl.col("device").cast(pl.String).str.zfill(7)])
        ),
    )
    transactions = pl.DataFrame(
        {
            "transaction_id": frame["transaction_id"],
            "event_time": pl.Series(event_us, dtype=pl.Int64).cast(pl.Datetime("us")),
            "customer_id": world.customer_ids.gather(ev["cust"]),
            "merchant_id": world.merchant_ids.gather(merch),
            "amount": amount,
            "currency": pl.Series(_CURRENCIES).gather(currency),
            "channel": pl.Series(GENERATED_CHANNELS).gather(channel),
            "country": pl.Series(_COUNTRIES).gather(ev["country"]),
            "merchant_category": pl.Series(_MCC).gather(world.merch_category[merch]),
            "device_id": frame["device_id"],
        },
        schema=TRANSACTION_SCHEMA,
    )

    labelled = np.flatnonzero(ev["label"] >= 0)
    label_us = (ev["t"][labelled] + ev["delay"][labelled]) * 1_000_000
    labels = (
        pl.DataFrame({"scenario": ev["scenario"][labelled]})
        .select(
            transaction_id=transactions["transaction_id"].gather(labelled),
            label=pl.Series(ev["label"][labelled], dtype=pl.Int8),
            label_time=pl.Series(label_us, dtype=pl.Int64).cast(pl.Datetime("us")),
            fraud_scenario=pl.when(pl.col("scenario") >= 0).then(
                pl.lit(pl.Series(FRAUD_SCENARIOS)).gather(pl.col("scenario").clip(0))
            ),
        )
        .cast(LABEL_SCHEMA)
    )
    return transactions, labels


def iter_days(config: SyntheticConfig) -> Iterator[datetime.date]:
    """Every day of the simulated world, in order."""
    for offset in range(config.days):
        yield config.start_date + datetime.timedelta(days=offset)


def generate_period(
    config: SyntheticConfig,
    start: datetime.date | None = None,
    end: datetime.date | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Transactions and labels of the days ``[start, end]`` (default: the whole world), concatenated."""
    start = start or config.start_date
    end = end or config.end_date
    days = [d for d in iter_days(config) if start <= d <= end]
    frames = [generate_day(config, d) for d in days]
    if not frames:
        return pl.DataFrame(schema=TRANSACTION_SCHEMA), pl.DataFrame(schema=LABEL_SCHEMA)
    return pl.concat([f[0] for f in frames]), pl.concat([f[1] for f in frames])
