"""The model lifecycle as plain functions: train and register a candidate, evaluate it against the
champion (backtest + gates + model card), promote it or refuse it, roll back. The Dagster assets in
``assets/model.py`` and the ``mlp`` CLI call these; nothing here imports Dagster."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from mlp_platform.data.warehouse import warehouse_for
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.deciders.validate import gate_config, rollout_config
from mlp_platform.evaluation.backtest import prepare_window, run_backtest
from mlp_platform.evaluation.gates import (
    GateConfig,
    bias_gate,
    consistency_gate,
    data_gate,
    latency_gate,
    performance_gate,
)
from mlp_platform.evaluation.metrics import threshold_for_fpr
from mlp_platform.evaluation.model_card import render_html, render_markdown
from mlp_platform.features.spec import default_spec
from mlp_platform.registry.mlflow_registry import REFERENCE_PROFILE, ModelRegistry, ModelVersionRef, git_sha
from mlp_platform.registry.promotion import GateResult, PromotionOutcome, promote, rollback
from mlp_platform.registry.roles import audit_for, registry_for, sync_routing  # noqa: F401 -- part of this module's API
from mlp_platform.rollout import start_rollout
from mlp_platform.runtime.scorer import Scorer
from mlp_platform.settings import Settings
from mlp_platform.training.splits import select_days
from mlp_platform.training.trainer import TrainedModel, TrainingConfig, matrix, train_model

GOLDEN_ROWS = 500
TARGET_FPR = 0.01
#: The training-window profile (quantile bins, reference samples, calibrated drift thresholds) that
#: the daily drift report of this version compares with, stored with the version in MLflow.


@dataclass
class Evaluation:
    """What evaluating a candidate produced; passed explicitly to promotion."""

    candidate: ModelVersionRef
    champion_version: str | None
    backtest: dict[str, Any]
    gates: list[GateResult] = field(default_factory=list)
    card: str = ""  # the model card as rendered after the evaluation

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)


def load_training_set(settings: Settings) -> pl.DataFrame:
    warehouse = warehouse_for(settings)
    frame = warehouse.query("select * from training.training_set")
    if frame.is_empty():
        raise ValueError("training.training_set is empty: materialise the feature and training assets first")
    return frame


def _plots(y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, scores)
    pr, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test window)")
    hist, ax2 = plt.subplots(figsize=(5, 4))
    ax2.hist([scores[y == 0], scores[y == 1]], bins=50, log=True, label=["genuine", "fraud"])
    ax2.set(xlabel="score", ylabel="transactions (log)", title="Score histogram (test window)")
    ax2.legend()
    return {"pr_curve": pr, "score_histogram": hist}


def backtest_figure(backtest: dict[str, Any]):
    """Daily average precision and alert-budget precision, candidate vs champion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for role, style in (("candidate", "-o"), ("champion", "--s")):
        days = backtest.get("daily", {}).get(role)
        if not days:
            continue
        x = [d["day"] for d in days]
        axes[0].plot(x, [d["average_precision"] for d in days], style, label=role)
        axes[1].plot(x, [d["alert_budget_precision"] for d in days], style, label=role)
    axes[0].set(title="Average precision by day", ylabel="AP")
    axes[1].set(title=f"Alert-budget precision by day (k={backtest.get('settings', {}).get('k')})")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
    fig.tight_layout()
    return fig


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def figure_markdown(fig) -> str:
    """A figure as an inline PNG, for Dagster markdown metadata (the figure is closed)."""
    import base64

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return f"![backtest](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def train_candidate(settings: Settings, training: pl.DataFrame, config: TrainingConfig | None = None,
                    log=None) -> tuple[ModelVersionRef, TrainedModel, float]:
    """Train on the training set, log everything to MLflow and register a new version."""
    spec = default_spec()
    config = config or TrainingConfig(gap_days=load_decider(settings.deciders_dir).labels.delay_days)
    trained = train_model(training, spec.feature_names, config, log=log)
    valid = select_days(training, trained.split.valid)
    threshold = threshold_for_fpr(valid["label"].to_numpy(), trained.booster.predict(matrix(valid, spec.feature_names)),
                                  TARGET_FPR)
    test = select_days(training, trained.split.test).sort("event_time", "transaction_id")
    test_scores = trained.booster.predict(matrix(test, spec.feature_names))
    registry = registry_for(settings)
    plots = _plots(test["label"].to_numpy(), test_scores)
    ref = registry.log_training(
        trained, spec_hash=spec.spec_hash, code_version=git_sha(settings.project_root),
        operating_threshold=threshold, plots=plots, tags={"source": settings.source},
    )
    for figure in plots.values():
        _close(figure)
    golden = test.head(GOLDEN_ROWS)
    registry.log_json(ref.run_id, {
        "transaction_ids": golden["transaction_id"].to_list(),
        "scores": test_scores[: golden.height].tolist(),
    }, "golden.json")
    registry.log_text(ref.run_id, reference_profile(trained, training, spec.feature_names).to_json(),
                      REFERENCE_PROFILE)
    registry.log_json(ref.run_id, {"split": trained.split.as_dict(), "data_fingerprint": trained.data_fingerprint,
                                   "search": trained.search, "params": trained.params, "config": trained.config,
                                   "metrics": trained.metrics, "operating_threshold": threshold,
                                   "label_maturity_days": load_decider(settings.deciders_dir).labels.maturity_days},
                      "training_record.json")
    return ref, trained, threshold


def reference_profile(trained: TrainedModel, training: pl.DataFrame, feature_names: list[str]):
    """The drift reference of a model: the features and the model's scores on the most recent part of
    its training data, the validation and out-of-time test windows (after the fitting window). That is
    what the model was judged on and the closest to what it will serve; the first days of the fitting
    window carry the warm-up of the long (30-day) windows, whose counts are still growing there."""
    from mlp_platform.monitoring.profile import build_reference_profile

    window = pl.concat([select_days(training, trained.split.valid), select_days(training, trained.split.test)])
    x = matrix(window, feature_names)
    return build_reference_profile(window, feature_names, trained.booster.predict(x, num_threads=1), seed=0,
                                   days=window["event_time"].dt.date().to_numpy())


def load_reference_profile(settings: Settings, version: str):
    """The reference profile stored with a version (None for a version trained before profiles)."""
    from mlp_platform.monitoring.profile import ReferenceProfile

    registry = registry_for(settings)
    text = registry.load_text(registry.ref(version).run_id, REFERENCE_PROFILE)
    return ReferenceProfile.from_json(text) if text is not None else None


def load_scorer(registry: ModelRegistry, version: str) -> Scorer:
    """A registered version through the serving code path (schema checked against the spec)."""
    return Scorer.from_model_dir(registry.model_dir(version), default_spec().feature_names, version=version)


def _threshold(registry: ModelRegistry, version: str) -> float:
    return float(registry.version_tags(version)["operating_threshold"])


def evaluate_candidate(settings: Settings, candidate: ModelVersionRef, training: pl.DataFrame,
                       config: GateConfig | None = None, seed: int = 0) -> Evaluation:
    """Backtest the candidate against the current champion on the candidate's out-of-time window and
    run every gate. Records backtest, gates and model card with the version; refusals are audited."""
    config = config or gate_config(load_decider(settings.deciders_dir))
    registry = registry_for(settings)
    spec = default_spec()
    record = registry.load_json(candidate.run_id, "training_record.json")
    if record is None:
        raise ValueError(f"version {candidate.version} has no training record: not trained by this platform")
    split = record["split"]
    window_days = (_date(split["test_start"]), _date(split["test_end"]))
    window = prepare_window(select_days(training, window_days).sort("event_time", "transaction_id"),
                            history=training)
    if window.is_empty():
        raise ValueError(f"the out-of-time window {window_days} has no rows in the training set")
    x = matrix(window, spec.feature_names)
    cand_scorer = load_scorer(registry, candidate.version)
    cand_scores = cand_scorer.score_matrix(x)
    cand_threshold = _threshold(registry, candidate.version)
    champion = registry.alias("champion")
    champ_scores = champ_threshold = None
    if champion is not None and champion != candidate.version:
        champ_scores = load_scorer(registry, champion).score_matrix(x)
        champ_threshold = _threshold(registry, champion)
    else:
        champion = None
    backtest = run_backtest(window, cand_scores, cand_threshold, champ_scores, champ_threshold, seed=seed)
    backtest["champion_version"] = champion
    golden = registry.load_json(candidate.run_id, "golden.json") or {"transaction_ids": [], "scores": []}
    golden_rows = (window.filter(pl.col("transaction_id").is_in(golden["transaction_ids"]))
                   .sort("event_time", "transaction_id"))
    gates = [
        data_gate(training, spec.feature_names, spec.spec_hash, config),
        consistency_gate(cand_scorer, matrix(golden_rows, spec.feature_names), np.array(golden["scores"]),
                         spec.feature_names, config.consistency_tolerance),
        latency_gate(cand_scorer, x[:500], config.latency_p99_budget_us, config.latency_samples),
        performance_gate(backtest, config),
        bias_gate(window, cand_scores, cand_threshold, config, seed=seed),
    ]
    evaluation = Evaluation(candidate, champion, backtest, gates)
    registry.log_json(candidate.run_id, backtest, "backtest.json")
    figure = backtest_figure(backtest)
    registry.client.log_figure(candidate.run_id, figure, "plots/backtest_daily.png")
    _close(figure)
    registry.log_json(candidate.run_id, {"gates": [g.as_dict() for g in gates]}, "gates.json")
    registry.set_version_tag(candidate.version, "gates", "passed" if evaluation.passed else "failed")
    if not evaluation.passed:
        audit_for(settings).append(
            "promotion_refused", model=candidate.name, version=candidate.version, training_run=candidate.run_id,
            by_run="evaluation", actor="gates", champion=champion,
            reason="gate(s) failed: " + "; ".join(f"{g.name}: {g.summary}" for g in gates if not g.passed),
            gates=[g.as_dict() for g in gates])
        registry.set_version_tag(candidate.version, "promotion", "refused")
    evaluation.card = write_model_card(settings, candidate.version)
    return evaluation


def promote_candidate(settings: Settings, evaluation: Evaluation, run_id: str, policy: str = "champion") -> PromotionOutcome:
    """Promote a gated candidate. ``champion``: at once; ``challenger``: the challenger role only;
    ``staged``: a staged rollout starts (shadow, then canary stages, then champion, driven by the
    rollout sensor) -- or, with no champion yet, the candidate becomes champion at once."""
    registry = registry_for(settings)
    if policy == "staged" and evaluation.passed and registry.alias("champion") not in (None, evaluation.candidate.version):
        return _start_staged_rollout(settings, registry, evaluation, run_id)
    if policy == "staged":
        policy = "champion"  # refused by the gates (audited as such), or the very first model
    outcome = promote(registry, audit_for(settings), evaluation.candidate, evaluation.gates, run_id=run_id,
                      policy=policy)
    if outcome.promoted:
        sync_routing(settings, updated_by=f"promotion run {run_id}")
    write_model_card(settings, evaluation.candidate.version)
    return outcome


def _start_staged_rollout(settings: Settings, registry: ModelRegistry, evaluation: Evaluation,
                          run_id: str) -> PromotionOutcome:
    champion = registry.alias("champion")
    outcome = start_rollout(settings, evaluation.candidate.version, run_id,
                            rollout_config(load_decider(settings.deciders_dir), settings.rollout_config), actor="dagster")
    write_model_card(settings, evaluation.candidate.version)
    return PromotionOutcome(outcome.applied, evaluation.candidate.version, "shadow" if outcome.applied else None,
                            champion, outcome.message, outcome.audit_seq if outcome.audit_seq is not None else -1)


def rollback_champion(settings: Settings, run_id: str, reason: str, actor: str = "operator") -> PromotionOutcome:
    registry = registry_for(settings)
    outcome = rollback(registry, audit_for(settings), run_id=run_id, reason=reason, actor=actor)
    sync_routing(settings, updated_by=f"rollback run {run_id}")
    for version in {outcome.version, outcome.previous_champion}:
        if version:
            write_model_card(settings, version)
    return outcome


def card_evidence(settings: Settings, version: str) -> dict[str, Any]:
    registry = registry_for(settings)
    ref = registry.ref(version)
    tags = registry.version_tags(version)
    record = registry.load_json(ref.run_id, "training_record.json") or {}
    gates = (registry.load_json(ref.run_id, "gates.json") or {}).get("gates", [])
    trail = [r for r in audit_for(settings).records()
             if r.get("version") == version or r.get("replaced") == version]
    roles = [role for role, v in registry.roles().items() if v == version]
    status = ", ".join(roles) if roles else tags.get("promotion", "registered, not evaluated" if not gates else
                                                      "evaluated")
    return {
        "name": ref.name, "version": version, "tags": tags, "status": status,
        "training": record, "backtest": registry.load_json(ref.run_id, "backtest.json"),
        "gates": gates, "audit": trail, "features": json.loads(tags.get("features", "[]")),
        "label_maturity_days": record.get("label_maturity_days"),
        "absent_fields": "channel, country, device" if tags.get("source") == "handbook" else None,
    }


def write_model_card(settings: Settings, version: str) -> str:
    """Render the card from recorded evidence and store it with the version (MLflow run)."""
    registry = registry_for(settings)
    evidence = card_evidence(settings, version)
    markdown = render_markdown(evidence)
    ref = registry.ref(version)
    registry.log_text(ref.run_id, markdown, "model_card.md")
    registry.log_text(ref.run_id, render_html(markdown, f"{ref.name} v{version}"), "model_card.html")
    return markdown


def _date(text: str):
    import datetime as dt

    return dt.date.fromisoformat(text)


