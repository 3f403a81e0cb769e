"""Model stage: train and register a candidate, backtest it against the champion, gate it
(blocking asset checks), promote it, and keep a model card per version. Versions are passed
explicitly from asset to asset; nothing "loads the latest"."""

import dataclasses

import dagster as dg
from dagster import AssetExecutionContext

from assets.resources import PlatformSettingsResource
from mlp_platform import lifecycle
from mlp_platform.deciders.declaration import load_decider
from mlp_platform.deciders.validate import gate_config
from mlp_platform.evaluation.gates import GateConfig
from mlp_platform.registry.mlflow_registry import ModelVersionRef
from mlp_platform.training.trainer import TrainingConfig

TRAINING_SET = dg.AssetKey(["training", "training_set"])
GATES = ("data", "consistency", "latency", "performance", "bias")


class TrainingRunConfig(dg.Config):
    seed: int = 7
    n_candidates: int = 6
    n_folds: int = 3
    max_rounds: int = 300


class EvaluationConfig(dg.Config):
    """Per-run overrides of the decider's declared gates (``deciders/<name>.yaml``, section ``gates``);
    a field left empty keeps the declared value. Tolerances are absolute losses the paired 95% interval
    must exclude; small windows give wide intervals."""

    ap_tolerance: float | None = None
    alert_budget_tolerance: float | None = None
    recall_tolerance: float | None = None
    latency_p99_budget_us: float | None = None
    require_bias_segments: bool | None = None

    def gate_config(self, declared: GateConfig) -> GateConfig:
        tolerances = dict(declared.tolerances)
        for metric, value in (("average_precision", self.ap_tolerance),
                              ("alert_budget_precision", self.alert_budget_tolerance),
                              ("recall_at_fpr", self.recall_tolerance)):
            if value is not None:
                tolerances[metric] = value
        changes: dict = {"tolerances": tuple(tolerances.items())}
        if self.latency_p99_budget_us is not None:
            changes["latency_p99_budget_us"] = self.latency_p99_budget_us
        if self.require_bias_segments is not None:
            changes["require_bias_segments"] = self.require_bias_segments
        return dataclasses.replace(declared, **changes)


class PromotionConfig(dg.Config):
    #: "staged" (default): a passing candidate starts a staged rollout (shadow -> canary -> champion,
    #: driven by the rollout sensor; the first model becomes champion at once); "champion": at once;
    #: "challenger": only the challenger role.
    policy: str = "staged"


def _metrics_table(evaluation: lifecycle.Evaluation) -> str:
    backtest = evaluation.backtest
    cand, champ = backtest["candidate"], backtest.get("champion")
    head = "| metric | candidate" + (f" v{evaluation.candidate.version} | champion v{evaluation.champion_version}"
                                      " | paired diff [95% CI] |" if champ else " |")
    lines = [head, "|---|---|" + ("---|---|" if champ else "")]
    for metric in ("roc_auc", "average_precision", "recall_at_fpr", "alert_budget_precision",
                   "fraud_amount_caught", "approval_rate"):
        row = f"| {metric} | {cand.get(metric)!s:.6} |"
        if champ:
            p = (backtest.get("paired") or {}).get(metric)
            diff = f"{p['diff']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]" if p and p.get("low") is not None else ""
            row += f" {champ.get(metric)!s:.6} | {diff} |"
        lines.append(row)
    return "\n".join(lines)


@dg.asset(
    group_name="model", kinds={"lightgbm", "mlflow"}, deps=[TRAINING_SET],
    description="Trains a LightGBM fraud model on the training set (time-ordered splits, label-delay gaps, "
                "bounded prequential search, early stopping), logs it to MLflow and registers a new version.",
)
def candidate_model(context: AssetExecutionContext, config: TrainingRunConfig,
                    platform: PlatformSettingsResource) -> dg.Output[ModelVersionRef]:
    settings = platform.get()
    training = lifecycle.load_training_set(settings)
    train_config = TrainingConfig(seed=config.seed, n_candidates=config.n_candidates, n_folds=config.n_folds,
                                  max_rounds=config.max_rounds, gap_days=load_decider(settings.deciders_dir).labels.delay_days)
    ref, trained, threshold = lifecycle.train_candidate(settings, training, train_config, log=context.log.info)
    return dg.Output(ref, metadata={
        "model_version": ref.version, "mlflow_run_id": ref.run_id, "operating_threshold": threshold,
        "trees": trained.best_iteration, **{k: v for k, v in trained.metrics.items() if v == v},
        "split": dg.MetadataValue.json(trained.split.as_dict()),
        "search": dg.MetadataValue.json(trained.search),
    })


@dg.asset(
    group_name="model", kinds={"python", "mlflow"},
    description="Backtests the candidate and the current champion on the candidate's out-of-time window "
                "(daily metrics, segments, bootstrap intervals, decision impact) and runs the promotion "
                "gates; the gates are the blocking checks of this asset.",
)
def candidate_evaluation(context: AssetExecutionContext, config: EvaluationConfig, candidate_model: ModelVersionRef,
                         platform: PlatformSettingsResource) -> dg.Output[lifecycle.Evaluation]:
    settings = platform.get()
    training = lifecycle.load_training_set(settings)
    evaluation = lifecycle.evaluate_candidate(
        settings, candidate_model, training, config.gate_config(gate_config(load_decider(settings.deciders_dir))))
    return dg.Output(evaluation, metadata={
        "candidate_version": candidate_model.version,
        "champion_version": evaluation.champion_version or "none",
        "gates_passed": evaluation.passed,
        "candidate_vs_champion": dg.MetadataValue.md(_metrics_table(evaluation)),
        "daily_backtest": dg.MetadataValue.md(lifecycle.figure_markdown(lifecycle.backtest_figure(evaluation.backtest))),
        "daily_metrics": dg.MetadataValue.json(evaluation.backtest.get("daily", {})),
        "decision_impact": dg.MetadataValue.json(evaluation.backtest.get("impact") or {}),
        "model_card": dg.MetadataValue.md(evaluation.card),
    })


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(f"gate_{name}", asset="candidate_evaluation", blocking=True,
                             description=f"Promotion gate: {name}") for name in GATES],
)
def promotion_gates(candidate_evaluation: lifecycle.Evaluation):
    results = {g.name: g for g in candidate_evaluation.gates}
    for name in GATES:
        gate = results.get(name)
        if gate is None:
            yield dg.AssetCheckResult(check_name=f"gate_{name}", passed=False, asset_key="candidate_evaluation",
                                      metadata={"explanation": "gate was not evaluated"})
            continue
        yield dg.AssetCheckResult(
            check_name=f"gate_{name}", asset_key="candidate_evaluation", passed=gate.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"explanation": gate.summary, "model_version": candidate_evaluation.candidate.version},
        )


@dg.asset(
    group_name="model", kinds={"mlflow"},
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description="When every gate passed: starts the staged rollout of the evaluated candidate (shadow first; "
                "the rollout sensor then takes it through the canary stages to champion), or makes it champion "
                "at once (first model / policy 'champion'). Every decision goes to the audit trail.",
)
def model_promotion(context: AssetExecutionContext, config: PromotionConfig, candidate_evaluation: lifecycle.Evaluation,
                    platform: PlatformSettingsResource) -> dg.Output[dict]:
    settings = platform.get()
    outcome = lifecycle.promote_candidate(settings, candidate_evaluation, run_id=context.run_id, policy=config.policy)
    roles = lifecycle.registry_for(settings).roles()
    return dg.Output({"outcome": outcome.__dict__, "roles": roles}, metadata={
        "promoted": outcome.promoted, "version": outcome.version, "role": outcome.role or "none",
        "previous_champion": outcome.previous_champion or "none", "reason": outcome.reason,
        "audit_seq": outcome.audit_seq, "roles": dg.MetadataValue.json(roles),
    })


@dg.asset(
    group_name="model", kinds={"markdown"},
    description="The model card of the version just promoted, generated from recorded evidence only "
                "(also stored with the version in MLflow as Markdown and HTML).",
)
def model_card(model_promotion: dict, platform: PlatformSettingsResource) -> dg.MaterializeResult:
    settings = platform.get()
    version = model_promotion["outcome"]["version"]
    card = lifecycle.write_model_card(settings, version)
    return dg.MaterializeResult(metadata={"model_version": version, "card": dg.MetadataValue.md(card)})


class RollbackConfig(dg.Config):
    reason: str


@dg.op(description="Restore the previous champion and record why in the audit trail.")
def rollback_champion(context: dg.OpExecutionContext, config: RollbackConfig,
                      platform: PlatformSettingsResource) -> dict:
    outcome = lifecycle.rollback_champion(platform.get(), run_id=context.run_id, reason=config.reason,
                                          actor="dagster")
    context.log.info(f"champion is now v{outcome.version} (was v{outcome.previous_champion}): {config.reason}")
    return outcome.__dict__


@dg.job(description="Roll back: the previous champion becomes champion again (audited).")
def rollback_job():
    rollback_champion()


MODEL_ASSETS = [candidate_model, candidate_evaluation, model_promotion, model_card]
MODEL_CHECKS = [promotion_gates]
MODEL_JOBS = [rollback_job]
