"""The model lifecycle of an application decider (credit origination) as plain functions: load its
data (the German credit data or the synthetic applications), train a monotone-constrained candidate,
backtest it against the scorecard, register it in the decider's own registered model, gate it, and
promote it or refuse it in the decider's own audit trail, with a model card that says why. The CLI
(``mlp deciders train``) and the Dagster assets call these; nothing here imports Dagster.

Gates (each a :class:`~mlp_platform.registry.promotion.GateResult` that explains itself):

* ``data``: rows and bads at least the declared minimums;
* ``performance``: the cross-validated ROC AUC at least the declared minimum; with a champion, the
  candidate's AUC interval must reach above the champion's recorded AUC minus the declared
  tolerance (non-inferiority; not paired, the champion's folds are not kept);
* ``fairness``: every declared segment (age band, sex) judged with intervals: no group's refusal
  of good applicants (FPR ratio) or of bad ones (TPR difference) beyond the declared bounds;
* ``monotonicity``: each declared constraint holds on a grid over real rows (the registered model);
* ``consistency``: the registered artefact, loaded through the serving scorer, gives the training
  path's scores (max abs diff <= the declared tolerance);
* ``latency``: a decision with adverse-action reasons, through the serving decider, within the
  declared p99 budget.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from mlp_platform.data.contracts import validate_applications, validate_outcomes
from mlp_platform.data.credit_synthetic import CreditSyntheticConfig, generate_period
from mlp_platform.data.german_credit import load_german_credit
from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.deciders.validate import gate_config
from mlp_platform.evaluation.cv_backtest import CVBacktestConfig, backtest_table, cross_validated_backtest
from mlp_platform.features.request import feature_frame
from mlp_platform.registry.mlflow_registry import REFERENCE_PROFILE, ModelVersionRef, git_sha
from mlp_platform.registry.promotion import GateResult, PromotionOutcome, promote
from mlp_platform.registry.roles import audit_for, registry_for
from mlp_platform.settings import Settings
from mlp_platform.training.trainer import MONOTONE_PARAMS, fit_monotone_booster

SOURCES = ("synthetic", "german")
MODEL_CARD = "model_card.md"
BACKTEST = "backtest.json"


@dataclass(frozen=True)
class ApplicationData:
    source: str
    applications: pl.DataFrame
    outcomes: pl.DataFrame
    #: Applications left out because their outcome was not known yet at ``as_of`` (synthetic only).
    immature: int = 0
    absent_fields: tuple[str, ...] = ()


def load_application_data(settings: Settings, decider: DeciderDeclaration, source: str) -> ApplicationData:
    """The decider's training data from ``source``, through the application and outcome contracts.
    Synthetic: the applications of the configured period (at least 240 days) whose performance
    window (the declared ``labels.maturity_days``) had ended by the period's end, with the outcomes
    known by then. Selecting by known outcome instead would over-represent bads (a default is known
    at once, a good outcome only at the window's end)."""
    if decider.request.schema_name != "application":
        raise ValueError(f"decider {decider.name!r} does not decide applications")
    if source == "german":
        german = load_german_credit(settings.german_credit_path)
        apps, _ = validate_applications(german.applications)
        outcomes, _ = validate_outcomes(german.outcomes, apps)
        return ApplicationData("german", apps, outcomes, 0, german.absent_fields)
    if source != "synthetic":
        raise ValueError(f"unknown source {source!r} (one of {', '.join(SOURCES)})")
    s = settings.synthetic
    config = CreditSyntheticConfig(seed=s.seed, start_date=s.start_date, days=max(s.days, 240),
                                   performance_window_days=decider.labels.delay_days, drift_start=s.drift_start)
    apps, outcomes = generate_period(config)
    apps, _ = validate_applications(apps)
    outcomes, _ = validate_outcomes(outcomes, apps)
    as_of = dt.datetime.combine(config.end_date, dt.time())
    matured = apps.filter(pl.col("event_time") < as_of - dt.timedelta(days=decider.labels.maturity_days))
    known = outcomes.filter(pl.col("label_time") < as_of).join(matured.select("application_id"),
                                                               on="application_id", how="semi")
    if known.height != matured.height:
        raise ValueError(f"{matured.height - known.height} matured application(s) have no outcome by {as_of}")
    return ApplicationData("synthetic", matured, known, apps.height - matured.height)


@dataclass
class ApplicationCandidate:
    ref: ModelVersionRef
    booster: Any
    backtest: dict[str, Any]
    data: dict[str, Any]
    features: pl.DataFrame = field(repr=False)
    labels: np.ndarray = field(repr=False)
    #: The training applications (requests), row for row with ``features``.
    applications: pl.DataFrame = field(repr=False, default_factory=pl.DataFrame)


def train_application_candidate(settings: Settings, decider: DeciderDeclaration, data: ApplicationData,
                                cv: CVBacktestConfig | None = None) -> ApplicationCandidate:
    """Backtest (cross-validated, against the scorecard), fit on every row, register with the
    backtest and the reference profile (the training population of the reasons)."""
    from mlp_platform.monitoring.profile import build_reference_profile

    spec = decider.spec
    joined = data.applications.join(data.outcomes.select("application_id", "label"), on="application_id")
    features = feature_frame(spec, joined)
    y = joined["label"].to_numpy().astype(np.int8)
    backtest = cross_validated_backtest(decider, data.applications, data.outcomes, cv)
    x = features.to_numpy().astype(np.float64)
    booster = fit_monotone_booster(x, y, spec.feature_names, decider.model.monotone_constraints)
    scores = booster.predict(x, num_threads=1)
    profile = build_reference_profile(features, spec.feature_names, scores, seed=0)
    model = backtest["models"]["model"]
    summary = {"source": data.source, "rows": int(y.size), "bads": int(y.sum()), "immature": data.immature,
               "absent_fields": list(data.absent_fields)}
    metrics = {f"cv_{m}": v["value"] for m, v in model.items()}
    metrics.update({f"cv_{m}_low": v["ci"][0] for m, v in model.items()})
    registry = registry_for(settings, decider)
    ref = registry.log_booster(
        booster, spec.feature_names, params={**MONOTONE_PARAMS, "trees": booster.num_trees()}, metrics=metrics,
        tags={"decider": decider.name, "source": data.source, "data.rows": str(y.size)},
        version_tags={"feature_spec_hash": spec.spec_hash, "code_version": git_sha(settings.project_root),
                      "operating_threshold": "0.5", "decider": decider.name, "source": data.source,
                      "cv_roc_auc": repr(model["roc_auc"]["value"])},
        artifacts={BACKTEST: backtest, REFERENCE_PROFILE: profile.to_json(), "training_data.json": summary})
    return ApplicationCandidate(ref, booster, backtest, summary, features, y, joined.drop("label"))


def _gate(name: str, passed: bool, summary: str, **details) -> GateResult:
    return GateResult(name, bool(passed), summary, details)


def gate_application_candidate(settings: Settings, decider: DeciderDeclaration,
                               candidate: ApplicationCandidate) -> list[GateResult]:
    from mlp_platform.runtime.fast_scorer import FastScorer
    from mlp_platform.runtime.loading import populations_from_profile
    from mlp_platform.runtime.scorer import Scorer
    from mlp_platform.serving.application import ApplicationDecider

    config = gate_config(decider)
    registry = registry_for(settings, decider)
    spec = decider.spec
    gates = []
    rows, bads = candidate.data["rows"], candidate.data["bads"]
    gates.append(_gate("data", rows >= config.min_training_rows and bads >= config.min_training_frauds,
                       f"{rows} applications, {bads} bad (minimums {config.min_training_rows} and "
                       f"{config.min_training_frauds})", rows=rows, bads=bads))

    auc = candidate.backtest["models"]["model"]["roc_auc"]
    minimum = dict(config.minimums).get("roc_auc", 0.0)
    champion = registry.alias("champion")
    text = f"cross-validated ROC AUC {auc['value']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}] (minimum {minimum:.2f})"
    passed = auc["value"] >= minimum
    champion_auc = None
    if champion is not None and champion != candidate.ref.version:
        tags = registry.version_tags(champion)
        recorded = tags.get("cv_roc_auc")
        if tags.get("source") != candidate.data["source"]:
            text += f"; champion v{champion} was trained on {tags.get('source')} data: not compared"
        elif recorded is not None:
            champion_auc = float(recorded)
            tolerance = dict(config.tolerances).get("roc_auc", 0.0)
            passed = passed and auc["ci"][1] >= champion_auc - tolerance
            text += f"; champion v{champion} {champion_auc:.3f}, tolerance {tolerance:.3f}"
    gates.append(_gate("performance", passed, text, auc=auc, champion=champion, champion_auc=champion_auc))

    fairness = candidate.backtest["fairness"]
    missing = [s for s in config.bias_segments if s not in fairness]
    failed = [s for s, f in fairness.items() if not f["judgement"]["passed"]]
    ok = not failed and not (missing and config.require_bias_segments)
    gates.append(_gate("fairness", ok, " ".join(f["judgement"]["explanation"] for f in fairness.values())
                       + (f" Segments not evaluated: {missing}." if missing else ""),
                       judgements={s: f["judgement"] for s, f in fairness.items()}))

    served = Scorer.from_model_dir(registry.model_dir(candidate.ref.version), spec.feature_names,
                                   version=candidate.ref.version)
    x = candidate.features.to_numpy().astype(np.float64)
    violations = monotone_violations(served.booster, x, spec.feature_names, decider.model.monotone_constraints)
    gates.append(_gate("monotonicity", not violations,
                       "every declared constraint holds on a 15-point grid over 200 rows" if not violations
                       else f"the score moves against the declared direction of {sorted(violations)}",
                       constraints=dict(decider.model.monotone_constraints), violations=violations))

    fast = FastScorer.from_booster(served.booster, served.feature_names)
    sample = x[: min(len(x), 2000)]
    diff = float(np.max(np.abs(fast.score_matrix(sample) - candidate.booster.predict(sample, num_threads=1))))
    gates.append(_gate("consistency", diff <= config.consistency_tolerance,
                       f"registered artefact through the serving scorer: max |diff| {diff:.2e} "
                       f"(tolerance {config.consistency_tolerance:g})", max_abs_diff=diff))

    profile_text = registry.load_text(candidate.ref.run_id, REFERENCE_PROFILE)
    populations = populations_from_profile(orjson.loads(profile_text), spec.feature_names) if profile_text else {}
    decider_runtime = ApplicationDecider(decider, fast, populations, version=candidate.ref.version)
    requests = candidate_requests(candidate, config.latency_samples)
    p99 = decision_latency_p99_us(decider_runtime, requests)
    gates.append(_gate("latency", p99 <= config.latency_p99_budget_us,
                       f"decision with adverse-action reasons p99 {p99:.0f} us over {len(requests)} applications "
                       f"(budget {config.latency_p99_budget_us:.0f} us)", p99_us=p99))
    return gates


def monotone_violations(booster, x: np.ndarray, names: list[str], constraints: dict[str, int],
                        rows: int = 200, points: int = 15, seed: int = 0) -> dict[str, float]:
    """Each constrained feature whose grid sweep moved a score against its direction, with the largest
    such move (empty: every constraint holds)."""
    rng = np.random.default_rng(seed)
    base = x[rng.choice(len(x), size=min(rows, len(x)), replace=False)]
    out = {}
    for name, sign in constraints.items():
        j = names.index(name)
        column = x[:, j][~np.isnan(x[:, j])]
        if column.size == 0:
            continue  # absent in this data (the German data has no income): nothing to sweep
        grid = np.unique(np.quantile(column, np.linspace(0, 1, points)))
        scores = []
        for value in grid:
            varied = base.copy()
            varied[:, j] = value
            scores.append(booster.predict(varied, num_threads=1))
        worst = float(np.min(np.diff(np.asarray(scores), axis=0) * sign)) if len(grid) > 1 else 0.0
        if worst < -1e-12:
            out[name] = -worst
    return out


def candidate_requests(candidate: ApplicationCandidate, n: int) -> list[dict]:
    """Up to ``n`` of the candidate's training applications as requests (a seeded sample)."""
    apps = candidate.applications
    take = min(n, apps.height)
    return apps.sample(take, seed=0).to_dicts() if take else []


def decision_latency_p99_us(decider, requests: list[dict], warmup: int = 50) -> float:
    """p99 of ``decider.decide`` over ``requests`` (each request decided once after a warm-up)."""
    if not requests:
        return math.nan
    for request in requests[:warmup]:
        decider.decide(request)
    times = []
    for request in requests:
        t0 = time.perf_counter_ns()
        decider.decide(request)
        times.append((time.perf_counter_ns() - t0) / 1000)
    return float(np.percentile(times, 99))


def application_model_card(decider: DeciderDeclaration, candidate: ApplicationCandidate, gates: list[GateResult],
                           outcome: PromotionOutcome | None) -> str:
    """The candidate's model card (Markdown): what it decides, on what data, how it compares with
    the scorecard, every gate with its reason, and the promotion decision."""
    lines = [f"# Model card: {decider.model_name} v{candidate.ref.version} (decider {decider.name})", "",
             decider.description.strip(), "",
             f"- Score: {decider.model.score}",
             f"- Data: {candidate.data['source']}, {candidate.data['rows']} applications, {candidate.data['bads']} bad"
             + (f"; absent fields: {', '.join(candidate.data['absent_fields'])}" if candidate.data["absent_fields"] else ""),
             f"- Split: {candidate.backtest['split']}",
             f"- Monotone constraints: {dict(decider.model.monotone_constraints)}",
             f"- Protected attributes (not model inputs): {', '.join(decider.fairness.protected)}",
             f"- Policy: {' < '.join(decider.policy.actions)}; bounds {decider.policy.thresholds(0.5)}", "",
             "## Backtest against the scorecard", "", backtest_table(candidate.backtest), "",
             "## Gates", ""]
    for g in gates:
        lines.append(f"- **{g.name}**: {'pass' if g.passed else 'FAIL'}: {g.summary}")
    lines += ["", "## Decision", ""]
    if outcome is None:
        lines.append("Not yet decided.")
    elif outcome.promoted:
        lines.append(f"Promoted to {outcome.role}: {outcome.reason} (audit record {outcome.audit_seq}).")
    else:
        lines.append(f"Refused: {outcome.reason} (audit record {outcome.audit_seq}).")
    return "\n".join(lines) + "\n"


def decide_application_candidate(settings: Settings, decider: DeciderDeclaration, candidate: ApplicationCandidate,
                                 gates: list[GateResult], *, run_id: str, actor: str) -> PromotionOutcome:
    """Promote (every gate passed) or refuse, in the decider's own audit trail; the model card with
    the decision is stored with the version."""
    registry = registry_for(settings, decider)
    outcome = promote(registry, audit_for(settings, decider), candidate.ref, gates, run_id=run_id, actor=actor)
    registry.log_text(candidate.ref.run_id, application_model_card(decider, candidate, gates, outcome), MODEL_CARD)
    return outcome
