"""Decider declarations (issue 19, part 1): one file per decider, validated with errors that name the
file and the field, and read by the platform instead of settings.

Reverted fix: the service's thresholds back on the hard-wired 0.9 decline bound (or the label delay
back in the settings) makes ``test_a_declared_variant_reaches_the_service_the_registry_and_dbt``
fail on the variant's values (checked once by reverting ``ServingConfig.from_settings``)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from mlp_platform.deciders.declaration import (
    DeciderError,
    default_decider,
    load_decider,
    load_deciders,
    parse_decider,
    write_variant,
)
from mlp_platform.deciders.validate import gate_config, rollout_config, validate_deciders
from mlp_platform.evaluation.gates import GateConfig
from mlp_platform.features.spec import SPEC_PATH, default_spec
from mlp_platform.rollout.guardrails import RolloutConfig
from mlp_platform.settings import PROJECT_ROOT, load_settings

FRAUD = PROJECT_ROOT / "deciders" / "fraud.yaml"


def fraud_doc() -> dict:
    doc = yaml.safe_load(FRAUD.read_text())
    doc["feature_spec"] = str(SPEC_PATH)
    return doc


def test_the_fraud_decider_is_declared_and_valid():
    deciders = validate_deciders(PROJECT_ROOT / "deciders")
    fraud = deciders["fraud"]
    assert fraud.model_name == "fraud-detector" and fraud.entity.key == "transaction_id"
    assert fraud.policy.actions == ("approve", "review", "decline")
    assert fraud.policy.degraded_action == "review" and fraud.policy.reasons_for == ("review", "decline")
    assert fraud.spec.spec_hash == default_spec().spec_hash  # the one feature spec
    assert (fraud.labels.delay_days, fraud.labels.maturity_days) == (7, 14)
    # the declared gates and rollout are what the platform ran with before they were declared
    assert gate_config(fraud) == GateConfig()
    assert rollout_config(fraud) == RolloutConfig()
    # an operator's override lands on top of the declaration
    assert rollout_config(fraud, {"shadow_soak_s": 60}).shadow_soak_s == 60


def test_the_policy_bands_decide_from_the_lowest_score_up():
    policy = default_decider().policy
    bounds = policy.thresholds(0.3)
    assert bounds == {"review": 0.3, "decline": 0.9}
    assert [policy.decide(s, bounds) for s in (0.0, 0.2999, 0.3, 0.8999, 0.9, 1.0)] == \
        ["approve", "approve", "review", "review", "decline", "decline"]
    # a version whose operating threshold lies above the next band's bound: that band starts there too
    assert policy.thresholds(0.95) == {"review": 0.95, "decline": 0.95}
    assert policy.decide(0.95, policy.thresholds(0.95)) == "decline"
    assert policy.thresholds(0.3, {"decline": 0.5}) == {"review": 0.3, "decline": 0.5}
    assert policy.tag(bounds) == "r=0.3/d=0.9"
    assert policy.rank("approve") < policy.rank("review") < policy.rank("decline")


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"name": "Fraud!"}, "name: Value error, 'Fraud!': a decider name is lower case"),
    ({"entity": {"name": "transaction", "key": "card_number"}}, "entity.key 'card_number' is not a column"),
    ({"request": {"schema": "mortgage"}}, "unknown request schema 'mortgage'"),
    ({"model": {"registered_name": "fraud detector", "score": "p"}}, "is not a registered model name"),
    ({"policy": {"bands": [{"action": "decline", "min_score": 0.9}, {"action": "review", "min_score": 0.5}],
                 "degraded_action": "review", "reasons_for": ["review"]}}, "must increase"),
    ({"policy": {"bands": [{"action": "block", "min_score": 0.9}], "degraded_action": "block",
                 "reasons_for": []}}, "unknown action(s) ['block']"),
    ({"policy": {"bands": [{"action": "decline", "min_score": 0.9}], "degraded_action": "review",
                 "reasons_for": []}}, "degraded_action 'review' is not one of this policy's actions"),
    ({"policy": {"bands": [{"action": "decline", "min_score": 1.5}], "degraded_action": "decline",
                 "reasons_for": []}}, "min_score 1.5 must be in [0, 1]"),
    ({"labels": {"positive": "fraud", "delay_days": -1, "maturity_days": 14}},
     "labels.delay_days: Input should be greater than or equal to 0"),
    ({"model": {"registered_name": "fraud-detector", "score": "p", "monotone_constraints": {"shoe_size": 1}}},
     "model.monotone_constraints: ['shoe_size'] are not features of the spec"),
    ({"feature_spec": "/nonexistent/spec.yaml"}, "feature_spec: no file at /nonexistent/spec.yaml"),
])
def test_a_bad_declaration_is_refused_naming_the_file_and_the_field(tmp_path, change, message):
    path = tmp_path / "fraud.yaml"
    with pytest.raises(DeciderError) as err:
        parse_decider({**fraud_doc(), **change}, path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_gates_and_rollout_are_checked_against_their_owners(tmp_path):
    for section, value, message in (
            ("gates", {"max_fpr_ratoi": 1.2}, "unknown gate setting(s) ['max_fpr_ratoi']"),
            ("gates", {"tolerances": {"average_precision": "a lot"}}, "tolerances: expected a mapping"),
            ("gates", {"min_group_size": 10.5}, "min_group_size: expected a whole number"),
            ("gates", {"require_bias_segments": "yes"}, "require_bias_segments: expected true or false"),
            ("rollout", {"canary_stages": [0.5, 0.25, 1.0]}, "must be increasing shares"),
            ("rollout", {"shadow_soke_s": 1}, "unknown rollout config keys ['shadow_soke_s']")):
        directory = tmp_path / f"{section}-{len(value)}-{abs(hash(message))}"
        directory.mkdir()
        (directory / "fraud.yaml").write_text(yaml.safe_dump({**fraud_doc(), section: value}))
        load_deciders(directory)  # structurally fine: the serving path can read it
        with pytest.raises(DeciderError, match=rf"fraud.yaml: {section}: .*{message[:20]}"):
            validate_deciders(directory)


def test_a_directory_of_deciders_is_read_whole(tmp_path):
    with pytest.raises(DeciderError, match="no decider declarations"):
        load_deciders(tmp_path)
    (tmp_path / "fraud.yaml").write_text(yaml.safe_dump(fraud_doc()))
    (tmp_path / "fraud_copy.yaml").write_text(yaml.safe_dump({**fraud_doc(), "name": "fraud_copy"}))
    with pytest.raises(DeciderError, match="'fraud-detector' is already the model of decider 'fraud'"):
        load_deciders(tmp_path)
    (tmp_path / "fraud_copy.yaml").write_text(yaml.safe_dump({**fraud_doc(), "name": "other"}))
    with pytest.raises(DeciderError, match="name 'other' differs from the file's name 'fraud_copy'"):
        load_deciders(tmp_path)
    (tmp_path / "fraud_copy.yaml").write_text("name: [unclosed")
    with pytest.raises(DeciderError, match="fraud_copy.yaml: not valid YAML"):
        load_deciders(tmp_path)
    with pytest.raises(DeciderError, match="no such decider declaration"):
        load_decider(tmp_path, "credit")
    with pytest.raises(DeciderError, match="is not a decider name"):
        load_decider(tmp_path, "../fraud")


def test_an_edited_declaration_is_read_again(tmp_path):
    directory = write_variant(default_decider(), tmp_path, {"labels": {"delay_days": 3}})
    assert load_decider(directory).labels.delay_days == 3
    write_variant(default_decider(), tmp_path, {"labels": {"delay_days": 4, "maturity_days": 21}})
    assert load_decider(directory).labels.delay_days == 4  # not the cached first version
    with pytest.raises(DeciderError):  # an invalid variant is refused before it is written
        write_variant(default_decider(), tmp_path, {"labels": {"delay_days": -2}})
    assert load_decider(directory).labels.delay_days == 4


def test_a_declared_variant_reaches_the_service_the_registry_and_dbt(tmp_path, monkeypatch):
    from assets.features import dbt_vars
    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.serving.service import ServingConfig

    directory = write_variant(default_decider(), tmp_path / "deciders", {
        "model": {"registered_name": "fraud-detector-eu"},
        "labels": {"delay_days": 2, "maturity_days": 5},
        "policy": {"bands": [{"action": "review", "min_score": "operating_threshold"},
                             {"action": "decline", "min_score": 0.75}], "degraded_action": "decline"}})
    monkeypatch.setenv("MLP_DECIDERS_DIR", str(directory))
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLP_EVENT_TIME_MAX_AGE_S", raising=False)
    settings = load_settings()
    assert settings.deciders_dir == directory.resolve()
    config = ServingConfig.from_settings(settings)
    assert config.policy.thresholds(0.3) == {"review": 0.3, "decline": 0.75}
    assert config.policy.degraded_action == "decline"
    longest = max(v.lookback_seconds or 0 for v in default_spec().views)
    assert config.event_time_max_age_s == longest + 2 * 86_400  # the declared label delay
    assert ModelRegistry.from_settings(settings).model_name == "fraud-detector-eu"
    assert dbt_vars(settings) == {"label_delay_days": 2, "label_maturity_days": 5, "labels_decider": "fraud"}


def test_the_cli_checks_the_declarations(tmp_path, monkeypatch):
    from mlp_platform.cli import app

    monkeypatch.setenv("MLP_DECIDERS_DIR", str(PROJECT_ROOT / "deciders"))
    result = CliRunner().invoke(app, ["deciders", "check"])
    assert result.exit_code == 0, result.output
    assert "fraud" in result.output and "fraud-detector" in result.output
    (tmp_path / "fraud.yaml").write_text(yaml.safe_dump({**fraud_doc(), "gates": {"max_fpr": 2}}))
    monkeypatch.setenv("MLP_DECIDERS_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["deciders", "check"])
    assert result.exit_code == 1
    assert "unknown gate setting(s) ['max_fpr']" in " ".join(result.output.split())


def test_the_service_image_layout_resolves_the_declared_spec(tmp_path):
    # what deploy/service/Dockerfile places: /opt/mlp/deciders and the spec at the relative path named
    root = tmp_path / "opt" / "mlp"
    (root / "deciders").mkdir(parents=True)
    (root / "mlp_platform" / "features").mkdir(parents=True)
    (root / "deciders" / "fraud.yaml").write_text(FRAUD.read_text())
    spec_src = SPEC_PATH
    (root / "mlp_platform" / "features" / "feature_spec.yaml").write_text(spec_src.read_text())
    assert load_decider(root / "deciders").spec.spec_hash == default_spec().spec_hash
