"""The decider declaration: one YAML file per decider, validated by pydantic, with errors that say
which file and which field.

A decider is data, not code. Its file (``deciders/<name>.yaml``) declares everything that belongs to
that decision service: its entity and request schema, its feature spec, its registered model name,
its decision policy (bands and actions), its reason codes, its promotion gates, its labels (what a
positive is, how late it arrives) and its rollout settings. The platform's code reads a decider's
values from here; the settings module keeps only what belongs to the environment.

This module is light (pydantic, the feature spec): the scoring service loads declarations with it.
The gates and rollout sections are checked against their owners' configurations by
:mod:`mlp_platform.deciders.validate` (the code location and ``mlp deciders check`` run it).
"""

from __future__ import annotations

import math
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlp_platform.data.schema import REQUEST_SCHEMAS
from mlp_platform.features.spec import FeatureSpec, SpecError, load_spec
from mlp_platform.settings import PROJECT_ROOT

#: Actions a policy band may take; "approve" is the action below every band unless declared otherwise.
ACTIONS = ("approve", "approve_with_conditions", "counter_offer", "review", "refer", "decline")
#: A band's lower bound is a number in [0, 1] or the registered version's own operating threshold.
OPERATING_THRESHOLD = "operating_threshold"
#: The decider wired end to end first (the fraud decider): what a caller that names none gets.
DEFAULT_DECIDER = "fraud"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class DeciderError(ValueError):
    """A decider declaration is invalid or missing; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EntityDecl(_Strict):
    #: What one decision is about (a transaction, an application).
    name: str
    #: Its key column in the request schema (the idempotency key of a decision).
    key: str


class RequestDecl(_Strict):
    #: A canonical schema of mlp_platform.data.schema.
    schema_name: Annotated[str, Field(alias="schema")]

    @field_validator("schema_name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in REQUEST_SCHEMAS:
            raise ValueError(f"unknown request schema {value!r} (known: {', '.join(sorted(REQUEST_SCHEMAS))})")
        return value


class ModelDecl(_Strict):
    #: The registered model in the MLflow registry: one per decider, its own aliases and audit trail.
    registered_name: str
    #: What the score is (a probability of the positive label), for the model card and the API.
    score: str
    #: Features whose effect on the score must be monotone (+1 increasing, -1 decreasing).
    monotone_constraints: dict[str, Literal[-1, 1]] = Field(default_factory=dict)

    @field_validator("registered_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _MODEL_NAME.match(value):
            raise ValueError(f"{value!r} is not a registered model name (letters, digits, '.', '_', '-')")
        return value


class Band(_Strict):
    action: str
    #: A score at or above this takes the band's action (the highest band reached wins).
    min_score: float | Literal["operating_threshold"]

    @field_validator("min_score")
    @classmethod
    def _unit(cls, value):
        if isinstance(value, float) and not (0.0 <= value <= 1.0 and math.isfinite(value)):
            raise ValueError(f"min_score {value} must be in [0, 1] or {OPERATING_THRESHOLD!r}")
        return value


class PolicyDecl(_Strict):
    #: Bands from the lowest score up; below the first band: ``default_action``.
    bands: tuple[Band, ...]
    default_action: str = "approve"
    #: The least a decision on fallback (degraded) features can be.
    degraded_action: str
    #: Actions whose answers carry reason codes.
    reasons_for: tuple[str, ...]
    max_reasons: int = Field(3, ge=1, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyDecl:
        actions = [self.default_action, *(b.action for b in self.bands)]
        unknown = sorted({a for a in [*actions, self.degraded_action, *self.reasons_for] if a not in ACTIONS})
        if unknown:
            raise ValueError(f"unknown action(s) {unknown} (allowed: {', '.join(ACTIONS)})")
        if len(set(actions)) != len(actions):
            raise ValueError(f"each action may appear once among default_action and the bands, got {actions}")
        if not self.bands:
            raise ValueError("a policy needs at least one band")
        if self.degraded_action not in actions:
            raise ValueError(f"degraded_action {self.degraded_action!r} is not one of this policy's actions {actions}")
        numbers = [b.min_score for b in self.bands if not isinstance(b.min_score, str)]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise ValueError(f"band min_score values must increase from the first band to the last, got {numbers}")
        if sum(isinstance(b.min_score, str) for b in self.bands) > 1:
            raise ValueError(f"at most one band may start at {OPERATING_THRESHOLD!r}")
        return self

    @property
    def actions(self) -> tuple[str, ...]:
        """Every action, from the lowest score to the highest."""
        return (self.default_action, *(b.action for b in self.bands))

    def thresholds(self, operating_threshold: float, overrides: dict[str, float] | None = None) -> dict[str, float]:
        """The lower score bound of each band's action for a registered version (its operating threshold
        where a band says so), an override replacing a band's bound; a band never starts below the one
        before it (a lower bound is lifted to the previous one)."""
        overrides = overrides or {}
        out: dict[str, float] = {}
        floor = 0.0
        for band in self.bands:
            bound = overrides.get(band.action)
            if bound is None:
                bound = operating_threshold if isinstance(band.min_score, str) else band.min_score
            floor = max(floor, float(bound))
            out[band.action] = floor
        return out


    def rank(self, action: str) -> int:
        """An action's place from the lowest score (0) up."""
        return self.actions.index(action)

    def decide(self, score: float, thresholds: dict[str, float]) -> str:
        """The action of the highest band whose bound the score reaches (``thresholds`` from
        :meth:`thresholds`); below every band the default action."""
        for band in reversed(self.bands):
            if score >= thresholds[band.action]:
                return band.action
        return self.default_action

    @staticmethod
    def tag(thresholds: dict[str, float]) -> str:
        """The bounds as they appear in a decision's policy version ("r=0.31/d=0.9" for review and
        decline; other actions by their full name)."""
        return "/".join(f"{_TAGS.get(a, a)}={v:.6g}" for a, v in thresholds.items())


_TAGS = {"review": "r", "decline": "d"}


class CatalogueEntry(_Strict):
    #: The reason's stable code (what a notice and the decision log carry).
    code: Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,15}$")]
    #: The principal reason in plain language, suitable for an adverse-action notice: specific (what
    #: about the application), never "model score".
    text: Annotated[str, Field(min_length=8, max_length=200)]


class ReasonsDecl(_Strict):
    #: How each reason's code is formed where the catalogue has none: "R" + the feature's position in
    #: the spec (stable while the spec's order is).
    code_prefix: str = "R"
    #: Adverse-action reasons: every decline carries up to ``policy.max_reasons`` principal reasons
    #: from the catalogue (one entry per model feature, checked when the file is read).
    adverse_action: bool = False
    #: Feature name -> its reason code and text.
    catalogue: dict[str, CatalogueEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_codes(self) -> ReasonsDecl:
        codes = [e.code for e in self.catalogue.values()]
        twice = sorted({c for c in codes if codes.count(c) > 1})
        if twice:
            raise ValueError(f"reason codes used twice in the catalogue: {twice}")
        if self.adverse_action and not self.catalogue:
            raise ValueError("adverse_action needs a catalogue of reasons")
        return self


class FairnessDecl(_Strict):
    #: Request columns that are protected or sensitive (or direct proxies of one): measured by the
    #: fairness gate, and no model feature may read one unless ``model_may_use_protected``.
    protected: tuple[str, ...] = ()
    model_may_use_protected: bool = False


class CounterOfferDecl(_Strict):
    """How modified conditions are proposed for a declined or referred application: the amount scaled
    by each factor, each term; every combination except the request's own, nearest first (largest
    amount, then the term closest to the one asked), at most ``max_candidates`` scored in one call."""

    amount_factors: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    terms_months: tuple[Annotated[int, Field(ge=1, le=480)], ...] = (12, 24, 36, 48, 60)
    max_candidates: int = Field(16, ge=1, le=64)
    #: Request columns proportional to the monthly instalment (a band 1..4 of the instalment's share of
    #: income): rescaled with the instalment (rounded, clipped to 1..4).
    instalment_bands: tuple[str, ...] = ("installment_rate_pct",)
    #: The columns that carry the conditions.
    amount_column: str = "requested_amount"
    term_column: str = "term_months"


class LabelsDecl(_Strict):
    #: What a positive label is, in words (the model card says it).
    positive: str
    #: Label-delayed features only use events at least this old (days).
    delay_days: int = Field(ge=0)
    #: An event enters the training set once its label had this long to arrive (days).
    maturity_days: int = Field(ge=0)


class SubmissionDecl(_Strict):
    """Models handed over by a data scientist (``mlp models submit``)."""

    #: The share of the decider's applications held out for judging submitted models (by a hash of
    #: the entity key, so the same rows every time); ``mlp deciders export`` leaves them out.
    holdout_share: float = Field(0.2, gt=0.0, lt=0.5)
    #: The MLflow model flavours accepted: LightGBM (compiled fast scoring) and scikit-learn (any
    #: estimator with ``predict_proba``, served through the slower generic path).
    flavours: tuple[Literal["lightgbm", "sklearn"], ...] = ("lightgbm", "sklearn")
    #: A scikit-learn model serialised with pickle/cloudpickle runs arbitrary code when loaded; by
    #: default only MLflow's ``skops`` format (types audited at load) is accepted.
    allow_pickle: bool = False
    #: The data a submission is evaluated on when the submitter names none (an application
    #: lifecycle source: synthetic, german).
    default_source: str = "synthetic"


class MonitoringDecl(_Strict):
    """How the decider is watched and when drift retrains it (its own sensor and schedule)."""

    #: Days of applications (or transactions) in each daily report.
    window_days: int = Field(7, ge=1, le=90)
    #: Dataset drift: at least this share of the features drifted beyond their thresholds.
    drift_share: float = Field(0.3, gt=0.0, le=1.0)
    #: Consecutive days counting against the champion before a retrain; then no retrain for this long.
    retrain_min_days: int = Field(2, ge=1, le=30)
    retrain_cooldown_hours: float = Field(24.0, ge=0.0)
    retrain_severity: Literal["warn", "error"] = "error"
    #: The training source a drift retrain uses.
    retrain_source: str = "synthetic"


class OutcomeDecl(_Strict):
    """One outcome an analyst may record on a case: the label it becomes (1 = the declared positive,
    0 = not), the decision it stands for (for an override), and whether it needs a reason."""

    label: Literal[0, 1]
    #: The policy action this outcome amounts to (credit: approve / decline); none for a finding
    #: alone (fraud / not fraud).
    decision: str | None = None
    reason_required: bool = False


class ReviewDecl(_Strict):
    """The human review of this decider's decisions (issue 21): which decisions open a case, the
    queue's service level, and the outcomes an analyst records (they become labels)."""

    #: Policy actions whose decisions open a case (fraud: review; credit: refer).
    open_for: tuple[str, ...] = ()
    #: A case older than this (hours since its decision) is past its SLA (alerted on).
    sla_hours: float = Field(24.0, gt=0.0, le=24.0 * 90)
    #: Outcome name -> its meaning; names are lower case words.
    outcomes: dict[Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,30}$")], OutcomeDecl] = Field(default_factory=dict)
    #: Days after its decision an analyst outcome counts as known (its label delay): outcomes arrive
    #: long before chargebacks do.
    label_delay_days: float = Field(1.0, ge=0.0, le=365.0)


class DeploymentDecl(_Strict):
    """The decider's own Kubernetes Deployment (``deploy/deciders/<name>.yaml``, rendered from one
    template by ``mlp deciders manifests``): its scaling and resources."""

    min_replicas: int = Field(2, ge=1, le=100)
    max_replicas: int = Field(12, ge=1, le=500)
    #: The HPA's average CPU utilisation target (percent of the request).
    cpu_target: int = Field(60, ge=10, le=95)
    cpu_request: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?m?$")] = "1"
    memory_request: Annotated[str, Field(pattern=r"^[0-9]+(Mi|Gi)$")] = "1Gi"
    memory_limit: Annotated[str, Field(pattern=r"^[0-9]+(Mi|Gi)$")] = "2Gi"
    #: The PodDisruptionBudget's floor (below min_replicas, so a drain can proceed).
    min_available: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> DeploymentDecl:
        if not self.min_available < self.min_replicas <= self.max_replicas:
            raise ValueError(f"need min_available ({self.min_available}) < min_replicas ({self.min_replicas}) "
                             f"<= max_replicas ({self.max_replicas})")
        return self


class DeciderDeclaration(_Strict):
    """One decider, as declared in its file."""

    name: str
    description: str
    entity: EntityDecl
    request: RequestDecl
    #: The feature spec's path, relative to the declaration file.
    feature_spec: str
    model: ModelDecl
    policy: PolicyDecl
    reasons: ReasonsDecl = Field(default_factory=ReasonsDecl)
    fairness: FairnessDecl = Field(default_factory=FairnessDecl)
    #: Counter-offers (application deciders whose policy has a counter_offer band or that refer).
    counter_offer: CounterOfferDecl | None = None
    labels: LabelsDecl
    submission: SubmissionDecl = Field(default_factory=SubmissionDecl)
    #: A candidate that passes its gates becomes champion at once ("champion"), or goes through the
    #: staged rollout of the ``rollout`` section ("staged": shadow, canary stages, champion; the
    #: first model of a decider serves directly: nothing to compare with).
    promotion: Literal["champion", "staged"] = "champion"
    deployment: DeploymentDecl = Field(default_factory=DeploymentDecl)
    monitoring: MonitoringDecl = Field(default_factory=MonitoringDecl)
    #: Human review: the case queue, outcomes and overrides (absent: no decision opens a case).
    review: ReviewDecl = Field(default_factory=ReviewDecl)
    #: Promotion gates: fields of mlp_platform.evaluation.gates.GateConfig (absent: its default);
    #: checked by :func:`mlp_platform.deciders.validate.validate_decider`.
    gates: dict[str, Any] = Field(default_factory=dict)
    #: Staged rollout: fields of mlp_platform.rollout.guardrails.RolloutConfig (absent: its default).
    rollout: dict[str, Any] = Field(default_factory=dict)
    #: Where the file was read from (set by the loader; relative paths resolve against its folder).
    source: Path | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r}: a decider name is lower case letters, digits and '_' (at most 40), "
                             "starting with a letter")
        return value

    @model_validator(mode="after")
    def _entity_key(self) -> DeciderDeclaration:
        schema = REQUEST_SCHEMAS[self.request.schema_name]
        if self.entity.key not in schema:
            raise ValueError(f"entity.key {self.entity.key!r} is not a column of the {self.request.schema_name} "
                             f"schema ({', '.join(schema)})")
        unknown = sorted(set(self.fairness.protected) - set(schema))
        if unknown:
            raise ValueError(f"fairness.protected: {unknown} are not columns of the {self.request.schema_name} schema")
        actions = self.policy.actions
        review = self.review
        unknown = sorted(set(review.open_for) - set(actions))
        if unknown:
            raise ValueError(f"review.open_for: {unknown} are not actions of this policy {list(actions)}")
        if review.open_for and not review.outcomes:
            raise ValueError("review.open_for opens cases, so review.outcomes must say what an analyst may record")
        unknown = sorted({o.decision for o in review.outcomes.values() if o.decision} - set(actions))
        if unknown:
            raise ValueError(f"review.outcomes: decisions {unknown} are not actions of this policy {list(actions)}")
        offer = self.counter_offer
        if offer is not None:
            columns = [offer.amount_column, offer.term_column, *offer.instalment_bands]
            unknown = sorted(c for c in columns if c not in schema)
            if unknown:
                raise ValueError(f"counter_offer: {unknown} are not columns of the {self.request.schema_name} schema")
        return self

    @cached_property
    def spec_path(self) -> Path:
        path = Path(self.feature_spec)
        return path if path.is_absolute() or self.source is None else (self.source.parent / path).resolve()

    @cached_property
    def spec(self) -> FeatureSpec:
        return load_spec(self.spec_path)

    @property
    def model_name(self) -> str:
        return self.model.registered_name


def _where(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def parse_decider(doc: Any, source: Path | None = None) -> DeciderDeclaration:
    """Validate one declaration (its YAML already parsed), including its feature spec and the names
    the declaration uses from it; raise :class:`DeciderError` naming the file and each bad field."""
    label = str(source) if source else "decider declaration"
    if not isinstance(doc, dict):
        raise DeciderError(f"{label}: expected a mapping at the top level, got {type(doc).__name__}")
    try:
        decl = DeciderDeclaration.model_validate({**doc, "source": source})
    except ValidationError as err:
        problems = "; ".join(f"{_where(e)}: {e['msg']}" for e in err.errors())
        raise DeciderError(f"{label}: {problems}") from None
    if source is not None and source.stem != decl.name:
        raise DeciderError(f"{label}: name {decl.name!r} differs from the file's name {source.stem!r}")
    try:
        spec = decl.spec
    except FileNotFoundError:
        raise DeciderError(f"{label}: feature_spec: no file at {decl.spec_path}") from None
    except (SpecError, yaml.YAMLError) as err:
        raise DeciderError(f"{label}: feature_spec {decl.spec_path}: {err}") from None
    unknown = sorted(set(decl.model.monotone_constraints) - set(spec.feature_names))
    if unknown:
        raise DeciderError(f"{label}: model.monotone_constraints: {unknown} are not features of the spec")
    if spec.request != decl.request.schema_name:
        raise DeciderError(f"{label}: feature_spec is over {spec.request} requests, the decider's request schema "
                           f"is {decl.request.schema_name!r}")
    unknown = sorted(set(decl.reasons.catalogue) - set(spec.feature_names))
    if unknown:
        raise DeciderError(f"{label}: reasons.catalogue: {unknown} are not features of the spec")
    uncovered = [n for n in spec.feature_names if n not in decl.reasons.catalogue]
    if decl.reasons.adverse_action and uncovered:
        raise DeciderError(f"{label}: reasons.catalogue: adverse-action reasons need an entry for every model "
                           f"feature; missing: {uncovered}")
    if not decl.fairness.model_may_use_protected:
        reading = sorted({f.name for f in spec.features if f.column in decl.fairness.protected})
        if reading:
            raise DeciderError(f"{label}: feature(s) {reading} read a protected attribute "
                               f"({', '.join(decl.fairness.protected)}); the decider does not allow it "
                               "(fairness.model_may_use_protected)")
    return decl


def load_decider(directory: Path, name: str = DEFAULT_DECIDER) -> DeciderDeclaration:
    """The declaration of decider ``name`` in ``directory`` (``<name>.yaml``), parsed once per file
    version (the file's path, size and modification time)."""
    if not _NAME.match(name):
        raise DeciderError(f"{name!r} is not a decider name")
    path = (directory / f"{name}.yaml").resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DeciderError(f"{path}: no such decider declaration (decider {name!r})") from None
    return _load_cached(path, stat.st_size, stat.st_mtime_ns)


def default_decider() -> DeciderDeclaration:
    """The default decider of this checkout's ``deciders/`` (for callers given no settings, e.g. tests
    that build a service by hand)."""
    return load_decider(PROJECT_ROOT / "deciders")


@lru_cache(maxsize=64)
def _load_cached(path: Path, _size: int, _mtime_ns: int) -> DeciderDeclaration:
    return load_decider_file(path)


def load_decider_file(path: Path) -> DeciderDeclaration:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DeciderError(f"{path}: no such decider declaration") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DeciderError(f"{path}: not valid YAML: {err}") from None
    return parse_decider(doc, path.resolve())


def load_deciders(directory: Path) -> dict[str, DeciderDeclaration]:
    """Every declaration in ``directory`` (``*.yaml``), by name; registered model names must differ."""
    if not directory.is_dir():
        raise DeciderError(f"{directory}: no deciders directory")
    out: dict[str, DeciderDeclaration] = {}
    by_model: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        decl = load_decider_file(path)
        other = by_model.setdefault(decl.model_name, decl.name)
        if other != decl.name:
            raise DeciderError(f"{path}: model.registered_name {decl.model_name!r} is already the model of "
                               f"decider {other!r}; each decider has its own registered model")
        out[decl.name] = decl
    if not out:
        raise DeciderError(f"{directory}: no decider declarations (*.yaml)")
    return out


def write_variant(decl: DeciderDeclaration, directory: Path, updates: dict[str, Any],
                  as_name: str | None = None) -> Path:
    """Write a copy of ``decl``'s file into ``directory`` with ``updates`` merged into its sections
    (a mapping merges key by key, anything else replaces) and its feature spec path made absolute:
    the same decider with other values, for a test, a what-if or a benchmark; ``as_name``: a new
    decider of that name (its file ``<as_name>.yaml``; give it its own registered model in
    ``updates``). Returns the directory."""
    if decl.source is None:
        raise DeciderError(f"decider {decl.name!r} was not read from a file")
    doc = yaml.safe_load(decl.source.read_text())
    doc["feature_spec"] = str(decl.spec_path)

    def merge(into: dict, changes: dict) -> dict:
        for key, value in changes.items():
            into[key] = merge(dict(into.get(key) or {}), value) if isinstance(value, dict) else value
        return into

    merge(doc, updates)
    name = as_name or decl.name
    doc["name"] = name
    parse_decider(doc, directory / f"{name}.yaml")  # refuse an invalid variant before writing it
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory
