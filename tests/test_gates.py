"""Gate decision rules on hand-made evidence."""

from mlp_platform.evaluation.gates import GateConfig, data_gate, performance_gate
from mlp_platform.registry.audit import AuditLog, verify_chain

CONFIG = GateConfig(tolerances=(("average_precision", 0.02),), minimums=(("roc_auc", 0.75),
                                                                        ("average_precision", 0.05)))


def backtest(diff, low, high):
    return {"candidate": {"roc_auc": 0.9, "average_precision": 0.3}, "champion": {},
            "paired": {"average_precision": {"diff": diff, "low": low, "high": high}}}


def test_non_inferiority_rule():
    assert performance_gate(backtest(0.01, -0.015, 0.03), CONFIG).passed  # loss beyond 0.02 excluded
    refused = performance_gate(backtest(0.01, -0.03, 0.05), CONFIG)  # interval admits a 0.03 loss
    assert not refused.passed and "may be worse" in refused.summary
    assert not performance_gate(backtest(-0.10, -0.2, -0.05), CONFIG).passed
    missing = {"candidate": {}, "champion": {}, "paired": {}}
    assert not performance_gate(missing, CONFIG).passed


def test_first_model_minimums():
    assert performance_gate({"candidate": {"roc_auc": 0.8, "average_precision": 0.06}}, CONFIG).passed
    low = performance_gate({"candidate": {"roc_auc": 0.7, "average_precision": 0.06}}, CONFIG)
    assert not low.passed and "roc_auc" in low.summary.split("below minimum")[1]
    assert not performance_gate({"candidate": {"roc_auc": None, "average_precision": 0.5}}, CONFIG).passed


def test_data_gate_checks_spec_hash_and_size():
    import polars as pl

    frame = pl.DataFrame({"label": [0] * 1990 + [1] * 30, "f": [1.0] * 2020, "feature_spec_hash": ["abc"] * 2020})
    assert data_gate(frame, ["f"], "abc", CONFIG).passed
    stale = data_gate(frame, ["f"], "def", CONFIG)
    assert not stale.passed and "current spec is def" in stale.summary
    empty = data_gate(frame.with_columns(pl.lit(None, pl.Float64).alias("f")), ["f"], "abc", CONFIG)
    assert not empty.passed and "entirely null" in empty.summary


def test_audit_log_appends_and_verifies(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    for i in range(3):
        log.append("promotion", version=str(i), reason="r")
    assert verify_chain(log.records()).ok
    text = (tmp_path / "a.jsonl").read_text().replace('"version": "1"', '"version": "9"')
    (tmp_path / "a.jsonl").write_text(text)
    check = verify_chain(log.records())
    assert not check.ok and check.first_broken == 1


def test_bias_gate_says_when_it_could_not_judge():
    import numpy as np
    import polars as pl

    from mlp_platform.evaluation.gates import bias_gate

    window = pl.DataFrame({"label": [0, 1] * 50, "amount": [1.0] * 100})
    lenient = bias_gate(window, np.linspace(0, 1, 100), 0.5, CONFIG)
    assert lenient.passed and lenient.summary.startswith("NOT EVALUATED")
    strict = bias_gate(window, np.linspace(0, 1, 100), 0.5, GateConfig(require_bias_segments=True))
    assert not strict.passed
