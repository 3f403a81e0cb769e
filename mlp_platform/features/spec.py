"""The feature specification: loads the one declarative spec and expands it into named features.

The expanded list (:class:`Feature`) is the single source both engines read: the dbt macros (through
the compiled JSON in ``dbt_project/macros/generated/feature_spec.sql``) and the online store. Label
metadata can never be a feature input: the loader refuses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import polars as pl
import yaml

from mlp_platform.data.schema import (
    APPLICATION_LEVELS,
    LABEL_METADATA_COLUMNS,
    REQUEST_SCHEMAS,
)

SPEC_PATH = Path(__file__).with_name("feature_spec.yaml")

MODES = ("streaming", "batch", "on_demand")
KINDS_BY_MODE = {
    "streaming": {"window_agg", "window_distinct", "seconds_since_previous", "first_time", "ratio_to_feature"},
    "batch": {"label_rate"},
    "on_demand": {"request_value", "hour_of_day", "is_night", "is_weekend", "level_code", "feature_ratio"},
}
#: On-demand kinds computed from the request alone by :mod:`mlp_platform.features.request` (the
#: application path); the transaction path computes its own in the online store and in dbt.
REQUEST_ONLY_KINDS = frozenset({"request_value", "level_code", "feature_ratio"})
AGGS = ("count", "sum", "mean", "max")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SpecError(ValueError):
    """The feature specification is invalid; the message says where."""


def parse_duration(text: str) -> int:
    """'1h' -> 3600 seconds."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise SpecError(f"duration {text!r}: expected a number and one of s, m, h, d (e.g. 7d)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class Feature:
    """One named feature, fully resolved: everything an engine needs to compute it."""

    name: str
    view: str
    entity: str
    mode: str
    kind: str
    dtype: str  # "int" or "float"
    column: str | None = None
    agg: str | None = None
    window: str | None = None
    window_seconds: int | None = None
    lookback_seconds: int | None = None
    denominator: str | None = None
    params: dict[str, int] = field(default_factory=dict)
    #: feature_ratio only: the feature divided by ``denominator`` (None elsewhere; left out of the
    #: canonical JSON when None, so specs that have no ratio hash as before).
    numerator: str | None = None


@dataclass(frozen=True)
class Entity:
    name: str
    key: str
    description: str


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: str
    mode: str
    description: str
    lookback_seconds: int | None
    features: tuple[Feature, ...]


@dataclass(frozen=True)
class FeatureSpec:
    version: int
    entities: dict[str, Entity]
    views: tuple[FeatureView, ...]
    #: The request schema the spec's columns come from (mlp_platform.data.schema.REQUEST_SCHEMAS).
    request: str = "transaction"

    @property
    def features(self) -> tuple[Feature, ...]:
        return tuple(f for v in self.views for f in v.features)

    @property
    def feature_names(self) -> list[str]:
        """Model input columns, in the one canonical order."""
        return [f.name for f in self.features]

    def view(self, name: str) -> FeatureView:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(name)

    def to_json(self) -> str:
        """Canonical JSON of the resolved spec (what dbt reads and what the hash covers). Fields added
        after the first spec (``request`` other than transaction, ``numerator``) appear only where set."""
        doc = {
            "version": self.version,
            "entities": {k: asdict(e) for k, e in self.entities.items()},
            "views": [
                {**{k: v for k, v in asdict(view).items() if k != "features"},
                 "features": [_feature_doc(f) for f in view.features]}
                for view in self.views
            ],
        }
        if self.request != "transaction":
            doc["request"] = self.request
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _feature_doc(feature: Feature) -> dict:
    doc = asdict(feature)
    if doc["numerator"] is None:
        del doc["numerator"]
    return doc


def _stem(column: str) -> str:
    return column.removesuffix("_id")


def _numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric()


def _expand(view: dict, entity: str, key: str | None, index: int, schema: dict, request: str) -> list[Feature]:
    mode = view["mode"]
    name = view["name"]
    lookback = parse_duration(view["lookback"]) if view.get("lookback") else None
    out: list[Feature] = []
    for j, item in enumerate(view.get("features") or []):
        where = f"feature_views[{index}] ({name}) features[{j}]"
        kind = item.get("kind")
        if kind not in KINDS_BY_MODE[mode]:
            raise SpecError(f"{where}: kind {kind!r} not allowed in a {mode} view "
                            f"(allowed: {sorted(KINDS_BY_MODE[mode])})")
        column = item.get("column")
        if column is not None:
            if column in LABEL_METADATA_COLUMNS:
                raise SpecError(f"{where}: {column!r} is label metadata and can never be a feature input")
            if column not in schema:
                raise SpecError(f"{where}: {column!r} is not a canonical {request} column")
        windows = item.get("windows") or []
        for w in windows:
            if lookback is not None and parse_duration(w) > lookback:
                raise SpecError(f"{where}: window {w} is longer than the view's lookback {view['lookback']}")
        common = {"view": name, "entity": entity, "mode": mode, "kind": kind}
        if kind == "window_agg":
            for agg in item.get("aggs") or []:
                if agg not in AGGS:
                    raise SpecError(f"{where}: aggregation {agg!r} not one of {AGGS}")
                for w in windows:
                    fname = f"{entity}_txn_count_{w}" if agg == "count" else f"{entity}_{column}_{agg}_{w}"
                    out.append(Feature(fname, dtype="int" if agg == "count" else "float", column=column,
                                       agg=agg, window=w, window_seconds=parse_duration(w), **common))
        elif kind == "window_distinct":
            for w in windows:
                out.append(Feature(f"{entity}_distinct_{_stem(column)}_count_{w}", dtype="int", column=column,
                                   agg="count_distinct", window=w, window_seconds=parse_duration(w), **common))
        elif kind == "seconds_since_previous":
            out.append(Feature(f"{entity}_seconds_since_previous", dtype="float", lookback_seconds=lookback,
                               **common))
        elif kind == "first_time":
            if column == key:
                raise SpecError(f"{where}: first_time of the entity key itself is meaningless")
            out.append(Feature(f"{entity}_first_time_{_stem(column)}", dtype="int", column=column,
                               lookback_seconds=lookback, **common))
        elif kind == "ratio_to_feature":
            denominator = item.get("denominator")
            out.append(Feature(item.get("name") or f"{entity}_{column}_to_{denominator}", dtype="float",
                               column=column, denominator=denominator, **common))
        elif kind == "label_rate":
            for w in windows:
                out.append(Feature(f"{entity}_fraud_rate_{w}", dtype="float", window=w,
                                   window_seconds=parse_duration(w), **common))
                if parse_duration(w) % 86400:
                    raise SpecError(f"{where}: label_rate windows are whole days, got {w}")
        elif kind == "request_value":
            if column is None or not _numeric(schema[column]):
                raise SpecError(f"{where}: request_value needs a numeric column, {column!r} is not")
            out.append(Feature(column, dtype="int" if schema[column].is_integer() else "float", column=column,
                               **common))
        elif kind == "level_code":
            levels = item.get("levels") or APPLICATION_LEVELS.get(column or "")
            if column is None or schema[column] != pl.String() or not levels:
                raise SpecError(f"{where}: level_code needs a text column with known levels "
                                f"(mlp_platform.data.schema.APPLICATION_LEVELS, or levels: [...]), got {column!r}")
            if len(set(levels)) != len(levels):
                raise SpecError(f"{where}: level_code levels must be distinct, got {levels}")
            out.append(Feature(item.get("name") or f"{column}_code", dtype="int", column=column,
                               params={str(level): i for i, level in enumerate(levels)}, **common))
        elif kind == "feature_ratio":
            name, numerator, denominator = item.get("name"), item.get("numerator"), item.get("denominator")
            if not (name and numerator and denominator):
                raise SpecError(f"{where}: feature_ratio needs a name, a numerator and a denominator (features)")
            out.append(Feature(name, dtype="float", numerator=numerator, denominator=denominator, **common))
        elif kind == "hour_of_day":
            out.append(Feature("hour_of_day", dtype="int", **common))
        elif kind == "is_night":
            params = {"start_hour": int(item.get("start_hour", 22)), "end_hour": int(item.get("end_hour", 6))}
            if not all(0 <= h <= 23 for h in params.values()) or params["start_hour"] == params["end_hour"]:
                raise SpecError(f"{where}: is_night needs two different hours in 0..23, got {params}")
            out.append(Feature("is_night", dtype="int", params=params, **common))
        elif kind == "is_weekend":
            out.append(Feature("is_weekend", dtype="int", **common))
    return out


def parse_spec(doc: dict) -> FeatureSpec:
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise SpecError("feature spec: expected a mapping with version: 1")
    request = doc.get("request", "transaction")
    if request not in REQUEST_SCHEMAS:
        raise SpecError(f"feature spec: request {request!r} not one of {', '.join(REQUEST_SCHEMAS)}")
    schema = REQUEST_SCHEMAS[request]
    entities = {}
    for name, ent in (doc.get("entities") or {}).items():
        if ent.get("key") not in schema:
            raise SpecError(f"entity {name}: key {ent.get('key')!r} is not a canonical {request} column")
        entities[name] = Entity(name, ent["key"], ent.get("description", ""))
    views = []
    for i, view in enumerate(doc.get("feature_views") or []):
        mode, entity = view.get("mode"), view.get("entity")
        if mode not in MODES:
            raise SpecError(f"feature_views[{i}]: mode {mode!r} not one of {MODES}")
        if entity != request and entity not in entities:
            raise SpecError(f"feature_views[{i}]: unknown entity {entity!r}")
        if request != "transaction" and mode != "on_demand":
            raise SpecError(f"feature_views[{i}]: a spec over {request} requests has on-demand views only "
                            "(streaming and batch views are computed over transactions)")
        application_only = [f.get("kind") for f in view.get("features") or []
                            if f.get("kind") in ("level_code", "feature_ratio")]
        if application_only and request == "transaction":
            raise SpecError(f"feature_views[{i}]: {application_only[0]} is computed for application requests only")
        if mode == "streaming" and not view.get("lookback"):
            raise SpecError(f"feature_views[{i}]: a streaming view needs a lookback")
        key = entities[entity].key if entity in entities else None
        features = _expand(view, entity, key, i, schema, request)
        views.append(FeatureView(view["name"], entity, mode, " ".join(str(view.get("description", "")).split()),
                                 parse_duration(view["lookback"]) if view.get("lookback") else None,
                                 tuple(features)))
    spec = FeatureSpec(int(doc["version"]), entities, tuple(views), request)
    names = spec.feature_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"feature names defined twice: {', '.join(dupes)}")
    for view in spec.views:
        earlier = [f.name for f in view.features]
        for f in view.features:
            for role, ref in (("denominator", f.denominator), ("numerator", f.numerator)):
                if ref and ref not in earlier[: earlier.index(f.name)]:
                    raise SpecError(f"{f.name}: {role} {ref!r} must be a feature defined before it "
                                    f"in the same view ({view.name})")
    return spec


def load_spec(path: Path | None = None) -> FeatureSpec:
    path = path or SPEC_PATH
    with open(path) as fh:
        return parse_spec(yaml.safe_load(fh))


@cache
def default_spec() -> FeatureSpec:
    return load_spec(SPEC_PATH)
