"""Submission sensors: one per application decider. Each polls its decider's registered model for
versions submitted by a data scientist (``mlp models submit``, tag ``submission=pending``) and
requests that decider's submission run (evaluation, blocking gates, decision impact, model card,
promotion or refusal) for each, the version passed explicitly in the run config. The run key names
the version, so a version is judged once; the verdict moves its tag to ``promoted`` or ``refused``.
A sensor reads only its own decider's model: one decider's submissions never start another's runs."""

import dagster as dg

from assets.deciders import submission_job_name
from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.registry.submission import pending_submissions, submission_run_config
from mlp_platform.settings import load_settings


def submission_sensor_name(decider_name: str) -> str:
    return f"{decider_name}_submission_sensor"


def build_submission_sensor(decider: DeciderDeclaration) -> dg.SensorDefinition:
    name = decider.name

    @dg.sensor(name=submission_sensor_name(name), job_name=submission_job_name(name), minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Judges each model submitted to the {name} decider ({decider.model_name} versions "
                           "tagged submission=pending) with the decider's submission job.")
    def submission_sensor(context: dg.SensorEvaluationContext):
        pending = pending_submissions(load_settings(), decider)
        if not pending:
            return dg.SkipReason(f"no pending submission to {decider.model_name}")
        requests = []
        for sub in pending:
            source = sub["evaluation_source"] or decider.submission.default_source
            context.log.info(f"{decider.model_name} v{sub['version']} submitted by {sub['submitted_by']}: "
                             f"evaluating on {source} data")
            requests.append(dg.RunRequest(run_key=f"{name}-submission-v{sub['version']}",
                                          run_config=submission_run_config(name, sub["version"], source),
                                          tags={"decider": name, "submitted_version": sub["version"]}))
        return requests

    return submission_sensor


def build_submission_sensors(deciders: list[DeciderDeclaration]) -> list[dg.SensorDefinition]:
    return [build_submission_sensor(d) for d in deciders]
