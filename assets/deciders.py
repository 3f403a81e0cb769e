"""Per-decider asset graphs for application deciders (credit origination): one factory, one graph per
declaration file in ``deciders/`` whose request schema is ``application``; each under its own key
prefix and group (the decider's name), the same shape for every such decider:

    applications -> features (its generated dbt model, assets.features) -> training_data (blocking
    feature_parity check) -> candidate_model -> candidate_evaluation (blocking gate checks)
    -> model_promotion -> model_card

A decider added as a file appears here with no code change. The steps are the plain functions of
:mod:`mlp_platform.application_lifecycle`; the candidate (its registered version) is passed
explicitly from asset to asset.
"""

import dagster as dg
from dagster import AssetExecutionContext

from assets.resources import PlatformSettingsResource
from mlp_platform import application_lifecycle as lifecycle
from mlp_platform.deciders.declaration import DeciderDeclaration, load_deciders
from mlp_platform.evaluation.cv_backtest import CVBacktestConfig, backtest_table
from mlp_platform.evaluation.impact import action_impact_markdown

GATES = ("data", "performance", "fairness", "monotonicity", "consistency", "latency")


class ApplicationSourceConfig(dg.Config):
    #: "german" (the real German credit data, read in place) or "synthetic" (generated applications).
    source: str = "german"


class BacktestRunConfig(dg.Config):
    n_splits: int = 5
    n_repeats: int = 5
    n_boot: int = 500
    #: A submitted version (``mlp models submit``) to evaluate instead of training one; set by the
    #: decider's submission sensor. Empty: train a candidate.
    submitted_version: str = ""


def application_decider_assets(decider: DeciderDeclaration):
    """(assets, checks, jobs) of one application decider."""
    name = decider.name
    prefix = [name]

    def key(asset: str) -> dg.AssetKey:
        return dg.AssetKey([*prefix, asset])

    @dg.asset(key=key("applications"), group_name=name, kinds={"polars", "duckdb"},
              description=f"The {name} decider's applications and outcomes from the configured source, "
                          f"through the application and outcome contracts (synthetic: only applications whose "
                          f"performance window ended), written to raw.{name}_applications and "
                          f"raw.{name}_outcomes for its dbt feature model.")
    def applications(config: ApplicationSourceConfig, platform: PlatformSettingsResource):
        settings = platform.get()
        data = lifecycle.load_application_data(settings, decider, config.source)
        summary = lifecycle.store_application_data(settings, decider, data)
        return dg.Output(summary, metadata={**{k: v for k, v in summary.items() if k != "absent_fields"},
                                            "absent_fields": ", ".join(data.absent_fields) or "none"})

    @dg.asset(key=key("training_data"), group_name=name, kinds={"polars"},
              ins={"applications": dg.AssetIn(key("applications"))}, deps=[key("features")],
              description=f"The {name} decider's training data read back from the warehouse: applications, "
                          "outcomes and the features its dbt model computed (checked against the in-process "
                          "engine by the blocking feature_parity check).")
    def training_data(applications, platform: PlatformSettingsResource):
        data = lifecycle.read_application_data(platform.get(), decider, applications)
        return dg.Output(data, metadata={
            "source": data.source, "applications": data.applications.height,
            "bads": int(data.outcomes["label"].sum()), "immature_left_out": data.immature,
            "features_from": f"features.{name}_features (dbt)",
            "absent_fields": ", ".join(data.absent_fields) or "none"})

    @dg.asset_check(asset=key("training_data"), name="feature_parity", blocking=True,
                    description="The warehouse's features (the generated dbt model) equal the in-process "
                                "engine's on every application; a difference stops training.")
    def feature_parity(training_data):
        problems = lifecycle.feature_parity(decider, training_data)
        return dg.AssetCheckResult(passed=not problems, severity=dg.AssetCheckSeverity.ERROR, metadata={
            "applications": training_data.applications.height,
            "differences": "\n".join(problems) or "none"})

    @dg.asset(key=key("candidate_model"), group_name=name, kinds={"lightgbm", "mlflow"},
              ins={"training_data": dg.AssetIn(key("training_data"))},
              description=f"Trains a monotone-constrained LightGBM candidate of {decider.model_name}, backtests "
                          "it against a scorecard (cross-validated), registers the version; or, given a "
                          "submitted version (the submission sensor), judges that one on the platform holdout.")
    def candidate_model(context: AssetExecutionContext, config: BacktestRunConfig, training_data,
                        platform: PlatformSettingsResource):
        backtest = CVBacktestConfig(n_splits=config.n_splits, n_repeats=config.n_repeats, n_boot=config.n_boot)
        if config.submitted_version:
            candidate = lifecycle.evaluate_submitted_candidate(platform.get(), decider, training_data,
                                                               config.submitted_version, backtest)
            context.log.info(f"evaluating submitted {candidate.ref.name} v{candidate.ref.version} "
                             f"({candidate.flavour}, by {candidate.submission.get('submitted_by')})")
        else:
            candidate = lifecycle.train_application_candidate(platform.get(), decider, training_data, backtest)
            context.log.info(f"registered {candidate.ref.name} v{candidate.ref.version}")
        return dg.Output(candidate, metadata={
            "model_version": candidate.ref.version, "mlflow_run_id": candidate.ref.run_id,
            "flavour": candidate.flavour, "submitted_by": candidate.submission.get("submitted_by", "platform"),
            "split": candidate.backtest.get("split", "not evaluated"),
            "backtest": dg.MetadataValue.md(backtest_table(candidate.backtest) if candidate.backtest
                                            else f"not evaluated: {candidate.failure}")})

    @dg.asset(key=key("candidate_evaluation"), group_name=name, kinds={"python", "mlflow"},
              ins={"candidate_model": dg.AssetIn(key("candidate_model"))},
              description="Runs the decider's declared gates on the candidate; they are the blocking checks "
                          "of this asset.")
    def candidate_evaluation(candidate_model, platform: PlatformSettingsResource):
        settings = platform.get()
        gates = lifecycle.gate_application_candidate(settings, decider, candidate_model)
        impact = lifecycle.application_decision_impact(settings, decider, candidate_model)
        return dg.Output({"candidate": candidate_model, "gates": gates}, metadata={
            "decision_impact": dg.MetadataValue.md(action_impact_markdown(impact) if impact else "no champion"),
            "candidate_version": candidate_model.ref.version, "gates_passed": all(g.passed for g in gates),
            "gates": dg.MetadataValue.md("\n".join(f"- **{g.name}**: {'pass' if g.passed else 'FAIL'}: {g.summary}"
                                                   for g in gates))})

    @dg.multi_asset_check(specs=[dg.AssetCheckSpec(f"gate_{g}", asset=key("candidate_evaluation"), blocking=True,
                                                   description=f"Promotion gate: {g}") for g in GATES],
                          name=f"{name}_promotion_gates",
                          ins={"candidate_evaluation": dg.AssetIn(key("candidate_evaluation"))})
    def promotion_gates(candidate_evaluation):
        results = {g.name: g for g in candidate_evaluation["gates"]}
        for gate_name in GATES:
            gate = results.get(gate_name)
            yield dg.AssetCheckResult(
                check_name=f"gate_{gate_name}", asset_key=key("candidate_evaluation"),
                passed=gate is not None and gate.passed, severity=dg.AssetCheckSeverity.ERROR,
                metadata={"explanation": gate.summary if gate else "gate was not evaluated"})

    @dg.asset(key=key("model_promotion"), group_name=name, kinds={"mlflow"},
              ins={"candidate_evaluation": dg.AssetIn(key("candidate_evaluation"))},
              automation_condition=dg.AutomationCondition.eager()
              & dg.AutomationCondition.all_deps_blocking_checks_passed(),
              description="When every gate passed: the candidate becomes the decider's champion; a refusal "
                          "is recorded too. Both go to the decider's own audit trail, with the model card.")
    def model_promotion(context: AssetExecutionContext, candidate_evaluation, platform: PlatformSettingsResource):
        from assets.rollout import service_metrics

        settings = platform.get()
        candidate, gates = candidate_evaluation["candidate"], candidate_evaluation["gates"]
        metrics = service_metrics(settings, context.log.warning, decider=name) if decider.promotion == "staged" else None
        outcome = lifecycle.decide_application_candidate(settings, decider, candidate, gates, run_id=context.run_id,
                                                         actor="dagster", metrics_text=metrics)
        card = lifecycle.application_model_card(decider, candidate, gates, outcome)
        return dg.Output(outcome.__dict__, metadata={
            "promoted": outcome.promoted, "version": outcome.version, "role": outcome.role or "none",
            "reason": outcome.reason, "audit_seq": outcome.audit_seq, "model_card": dg.MetadataValue.md(card)})

    @dg.asset(key=key("model_card"), group_name=name, kinds={"mlflow"}, automation_condition=dg.AutomationCondition.eager(),
              ins={"candidate_evaluation": dg.AssetIn(key("candidate_evaluation")),
                   "model_promotion": dg.AssetIn(key("model_promotion"))},
              description="The candidate's model card (Markdown and HTML, stored with its MLflow run): what it "
                          "decides, on what data, the backtest against the scorecard, the decision impact "
                          "against the champion, every gate, and the verdict.")
    def model_card(candidate_evaluation, model_promotion, platform: PlatformSettingsResource):
        from mlp_platform.evaluation.model_card import render_html
        from mlp_platform.registry.promotion import PromotionOutcome
        from mlp_platform.registry.roles import registry_for

        candidate, gates = candidate_evaluation["candidate"], candidate_evaluation["gates"]
        markdown = lifecycle.application_model_card(decider, candidate, gates, PromotionOutcome(**model_promotion))
        registry = registry_for(platform.get(), decider)
        registry.log_text(candidate.ref.run_id, markdown, lifecycle.MODEL_CARD)
        registry.log_text(candidate.ref.run_id, render_html(markdown, f"{candidate.ref.name} v{candidate.ref.version}"),
                          "model_card.html")
        return dg.Output(markdown, metadata={"version": candidate.ref.version,
                                             "model_card": dg.MetadataValue.md(markdown)})

    job = dg.define_asset_job(f"{name}_train_job", selection=dg.AssetSelection.groups(name),
                              description=f"Train, backtest, gate and promote the {name} decider's model.")
    submission = dg.define_asset_job(
        submission_job_name(name), selection=dg.AssetSelection.groups(name),
        description=f"Judge a model submitted to the {name} decider (mlp models submit): the same evaluation, "
                    "gates, decision impact and model card; requested by the decider's submission sensor.")
    return ([applications, training_data, candidate_model, candidate_evaluation, model_promotion, model_card],
            [feature_parity, promotion_gates],
            [job, submission])


class MonitoringRunConfig(dg.Config):
    #: The monitored day (ISO date); the schedule passes the day before its run.
    day: str
    #: The version monitored; empty: the decider's champion when the run starts (recorded).
    model_version: str = ""
    #: Synthetic drift from this day on (ISO date; empty: the settings' MLP_DRIFT_START).
    drift_start: str = ""


def monitoring_assets(decider: DeciderDeclaration):
    """([batch scores, monitoring report], job, schedule) of one application decider's day."""
    import datetime as dt

    from mlp_platform.monitoring.applications import monitor_application_decider
    from mlp_platform.registry.roles import registry_for

    name = decider.name

    @dg.asset(key=dg.AssetKey([name, "monitoring_report"]), group_name=f"{name}_monitoring", kinds={"python"},
              description=f"The {name} decider's daily report: feature and score drift against the champion's "
                          "training population, online/offline skew, label performance on matured "
                          "applications; the decider's drift sensor reads its summary.")
    def monitoring_report(context: AssetExecutionContext, config: MonitoringRunConfig,
                          platform: PlatformSettingsResource):
        settings = platform.get()
        version = config.model_version or registry_for(settings, decider).alias("champion")
        if version is None:
            raise dg.Failure(f"decider {name} has no champion to monitor")
        report = monitor_application_decider(
            settings, decider, version, dt.date.fromisoformat(config.day),
            drift_start=dt.date.fromisoformat(config.drift_start) if config.drift_start else None,
            log_dir=settings.decision_log_root.parent / f"decisions-{name}")
        summary = report["summary"]
        context.log.info(f"{name} v{version} on {config.day}: drift {summary['drift_detected']} "
                         f"({summary['severity']}), decay {summary['performance_decay']}")
        return dg.MaterializeResult(metadata={
            "summary": dg.MetadataValue.json(summary), "model_version": str(version), "day": config.day,
            "drifted_features": ", ".join(summary["drifted_features"]) or "none",
            "label_auc": summary["label_auc"] if summary["label_auc"] is not None else float("nan")})

    @dg.asset(key=dg.AssetKey([name, "batch_scores"]), group_name=f"{name}_monitoring", kinds={"duckdb"},
              description=f"Every application of the day scored by the {name} decider's champion (its registered "
                          f"artefact, its declared policy): scoring.{name}_batch_scores, the day replaced.")
    def batch_scores(context: AssetExecutionContext, config: MonitoringRunConfig, platform: PlatformSettingsResource):
        from mlp_platform.batch.scoring import score_applications_day

        settings = platform.get()
        version = config.model_version or registry_for(settings, decider).alias("champion")
        if version is None:
            raise dg.Failure(f"decider {name} has no champion to score with")
        out = score_applications_day(settings, decider, version, dt.date.fromisoformat(config.day),
                                     dt.date.fromisoformat(config.drift_start) if config.drift_start else None)
        context.log.info(f"{name} v{version}: {out['rows']} applications of {config.day} scored")
        return dg.MaterializeResult(metadata={**{k: v for k, v in out.items() if k != "decisions"},
                                              "decisions": dg.MetadataValue.json(out["decisions"])})

    job = dg.define_asset_job(f"{name}_monitoring_job", selection=dg.AssetSelection.assets(batch_scores,
                                                                                          monitoring_report),
                              description=f"The {name} decider's day: batch scores and the monitoring report "
                                          "(config: day).")

    @dg.schedule(name=f"{name}_monitoring_schedule", job=job, cron_schedule="30 2 * * *",
                 default_status=dg.DefaultScheduleStatus.STOPPED,
                 description=f"Each night at 02:30 UTC, the {name} decider's report for the day before.")
    def schedule(context: dg.ScheduleEvaluationContext):
        day = (context.scheduled_execution_time.date() - dt.timedelta(days=1)).isoformat()
        return dg.RunRequest(run_key=f"{name}-monitoring-{day}", run_config={
            "ops": {f"{name}__monitoring_report": {"config": {"day": day}},
                    f"{name}__batch_scores": {"config": {"day": day}}}})

    return [batch_scores, monitoring_report], job, schedule


def rollout_step_job(decider: DeciderDeclaration) -> dg.JobDefinition:
    """The decider's staged-rollout step (requested by its rollout sensor): re-evaluates the
    guardrails from the decider's own decision logs and applies advance / complete / rollback."""
    from mlp_platform.deciders.validate import rollout_config
    from mlp_platform.rollout.machine import step_rollout

    name = decider.name

    @dg.op(name=f"{name}_rollout_step", description=f"One step of the {name} decider's staged rollout.")
    def rollout_step(context: dg.OpExecutionContext, platform: PlatformSettingsResource) -> dict:
        import datetime as dt

        from assets.rollout import service_metrics

        settings = platform.get()
        metrics = service_metrics(settings, context.log.warning, decider=name)
        decision, outcome = step_rollout(settings, context.run_id, rollout_config(decider),
                                         "dagster", metrics, now=dt.datetime.now(dt.UTC), decider=decider)
        context.log.info(f"{name} rollout: {decision.action}: {decision.reason} -> {outcome.message}")
        context.add_output_metadata({"action": decision.action, "applied": outcome.applied,
                                     "candidate": str(decision.candidate), "reason": decision.reason,
                                     "outcome": dg.MetadataValue.json(outcome.to_dict())})
        return outcome.to_dict()

    @dg.job(name=f"{name}_rollout_step_job",
            description=f"One staged-rollout step of the {name} decider: shadow -> canary stages -> champion, or "
                        "an automatic rollback when a guardrail fails.")
    def job():
        rollout_step()

    return job


def submission_job_name(decider_name: str) -> str:
    return f"{decider_name}_submission_job"


def application_deciders(settings) -> list[DeciderDeclaration]:
    """The declared deciders that decide applications (each gets the graph of this module)."""
    return [d for d in load_deciders(settings.deciders_dir).values() if d.request.schema_name == "application"]


def build_decider_assets(settings):
    """Every application decider's graphs (the fraud decider's are the platform's original ones):
    (assets, checks, jobs, schedules)."""
    assets, checks, jobs, schedules = [], [], [], []
    for decider in application_deciders(settings):
        a, c, j = application_decider_assets(decider)
        daily, monitoring_job, schedule = monitoring_assets(decider)
        assets += [*a, *daily]
        checks += c
        jobs += [*j, monitoring_job, rollout_step_job(decider)]
        schedules.append(schedule)
    return assets, checks, jobs, schedules
