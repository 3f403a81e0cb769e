"""Benchmark: the model lifecycle (train + register, backtest + gates, promote) on the demo synthetic
data and on the real Fraud Detection Handbook dataset (1.75M transactions), with a plain LightGBM
peer fitted and scored on the same split in the same run.

Not a test: it measures, on this machine, what training and evaluating a candidate costs through the
platform (``mlp_platform.lifecycle``, the functions the Dagster model assets call), where that time
goes, and what the model is worth on the real data's out-of-time window.

    .venv/bin/python bench/bench_training.py [--demo-repeats 3] [--handbook-repeats 2] [--json out.json]

Per dataset (each in a throw-away data directory under $TMPDIR, never the repo's data/):

0. Warehouse build, once, not the subject: ``ingest_days`` in this process, then ``dbt build`` of
   staging + features and of the training set (CLI subprocesses, own --target-path/--log-path, the
   way ``bench_features.py`` runs them); then ``load_training_set`` (timed: the model assets pay it).
1. Per repeat, in a fresh MLflow store (SQLite + local artefacts; the store's creation is timed
   apart, a long-lived store pays it once):
   a. ``train_candidate`` seed 7: the bounded prequential search, the final fit, the operating
      threshold, MLflow logging and registration;
   b. ``evaluate_candidate``: backtest (no champion yet) + the five gates + model card;
   c. ``promote_candidate``; if a gate refused the first model, the champion alias is set by hand
      (recorded and reported) so that step d still measures a backtest against a champion;
   d. ``train_candidate`` seed 8, ``evaluate_candidate`` (now candidate vs champion), promote;
   e. the peer: ``lightgbm.LGBMClassifier(n_jobs=1)`` with default parameters (``verbose=-1`` only
      silences its log), the same 32 spec features, fitted on the same train window, no search, no
      early stopping, no MLflow; its threshold is taken the same way (1% FPR on the validation
      window) and it is scored on the same out-of-time window with the same metrics
      (``run_backtest`` with the peer in the champion slot, so the paired day-block intervals of
      candidate minus peer come from the platform's own code).

Where the time goes inside ``train_candidate`` / ``evaluate_candidate`` is measured by wrapping
(for the duration of the run only) the module-level functions those call: ``train_model`` (split
into search / final fit / fingerprint by the timestamps of its own log lines, plus every LightGBM
``_fit`` call), the MLflow registry methods, the plots, each gate, the backtest and the model card.
Only the outermost wrapped call is charged, so the parts add up to the whole (the rest is reported
as "other": scoring matrices, thresholds, selecting windows).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_features import (  # noqa: E402  (the same dbt invocation as the feature benchmark)
    DBT_PROJECT,
    DEFAULT_DATASET,
    TargetDirs,
    dbt_args,
    fail,
    machine_info,
    run_child,
    run_results,
)

SEEDS = (7, 8)
PLATFORM_ENV_KEYS = ("MLP_SOURCE", "MLP_ENV", "MLP_WAREHOUSE", "MLFLOW_TRACKING_URI", "MLP_HANDBOOK_PATH",
                     "MLP_DATA_DIR", "MLP_DECIDERS_DIR")


# --------------------------------------------------------------------------------------------------
# Settings and the warehouse build (not the subject; timed once)
# --------------------------------------------------------------------------------------------------

def settings_for(source: str, data_dir: Path, dataset: Path):
    """load_settings() with this dataset's environment (the process environment is restored)."""
    from mlp_platform.settings import load_settings

    saved = {k: os.environ.get(k) for k in PLATFORM_ENV_KEYS}
    try:
        for key in PLATFORM_ENV_KEYS:
            os.environ.pop(key, None)
        os.environ["MLP_DATA_DIR"] = str(data_dir)
        if source == "handbook":
            os.environ["MLP_SOURCE"] = "handbook"
            os.environ["MLP_HANDBOOK_PATH"] = str(dataset)
        return load_settings()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def dbt_env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MLP_DATA_DIR": str(settings.data_dir), "MLP_WAREHOUSE_PATH": str(settings.duckdb_path),
                "MLP_DBT_TARGET": "local", "DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
    return env


def dbt_build(settings, vars_json: str, select: list[str], dirs: TargetDirs, name: str) -> dict:
    target, logs = dirs.new(name)
    cmd = [str(Path(sys.executable).with_name("dbt")), *dbt_args("build", vars_json, select, target, logs)]
    run = run_child(cmd, dbt_env(settings), DBT_PROJECT, logs / "stdout.log")
    if run.returncode != 0:
        fail(f"dbt build ({name}) failed", run.output)
    out = run_results(target)
    if out["not_ok"]:
        fail(f"dbt build ({name}): not ok: {out['not_ok']}", run.output)
    return {"wall_s": run.wall_s, "models": out["models"], "tests": out["tests"]}


def build_warehouse(settings, work: Path) -> dict:
    from mlp_platform.data.ingest import ingest_days
    from mlp_platform.data.warehouse import DuckDBWarehouse
    from mlp_platform.deciders.declaration import load_decider

    first, end = settings.source_days()
    last = end - dt.timedelta(days=1)
    t = time.perf_counter()
    result = ingest_days(settings, DuckDBWarehouse(settings.duckdb_path), first, end)
    ingest_s = time.perf_counter() - t
    dirs = TargetDirs(work / "dbt", None)
    labels = load_decider(settings.deciders_dir).labels
    vars_days = json.dumps({"min_day": first.isoformat(), "max_day": last.isoformat(),
                            "label_delay_days": labels.delay_days, "label_maturity_days": labels.maturity_days})
    vars_training = json.dumps({"label_delay_days": labels.delay_days, "label_maturity_days": labels.maturity_days})
    features = dbt_build(settings, vars_days, ["path:models/staging", "path:models/features"], dirs, "features")
    training = dbt_build(settings, vars_training, ["path:models/training"], dirs, "training")
    import duckdb

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        raw = con.execute("select count(*) from raw.transactions").fetchone()[0]
        feats = con.execute("select count(*) from features.transaction_features").fetchone()[0]
        rows = con.execute("select count(*) from training.training_set").fetchone()[0]
    if raw != result.transactions or feats != raw or rows == 0:
        fail(f"warehouse build: raw {raw}, ingested {result.transactions}, features {feats}, training set {rows}")
    return {"first_day": first.isoformat(), "end_day": end.isoformat(), "transactions": raw, "frauds": result.frauds,
            "training_rows": rows, "ingest_s": ingest_s, "dbt_features_s": features["wall_s"],
            "dbt_training_s": training["wall_s"], "dbt_tests": features["tests"] + training["tests"],
            "total_s": ingest_s + features["wall_s"] + training["wall_s"]}


# --------------------------------------------------------------------------------------------------
# Probes: time the parts of train_candidate / evaluate_candidate without changing what they do
# --------------------------------------------------------------------------------------------------

class Probes:
    """Wraps module attributes for the duration of the run; charges only the outermost probed call."""

    def __init__(self):
        self.depth = 0
        self.current: dict[str, float] | None = None
        self.fits: list[dict[str, Any]] = []
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        probes = self

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if probes.depth > 0 or probes.current is None:
                return original(*args, **kwargs)
            probes.depth += 1
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                probes.depth -= 1
                probes.current[label] = probes.current.get(label, 0.0) + time.perf_counter() - t

        self._undo.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    def wrap_fit(self, trainer_module: Any) -> None:
        original = trainer_module._fit
        probes = self

        def fit(params, x_train, y_train, x_valid, y_valid, max_rounds, early_stopping):
            t = time.perf_counter()
            booster = original(params, x_train, y_train, x_valid, y_valid, max_rounds, early_stopping)
            probes.fits.append({"rows": int(len(y_train)), "max_rounds": int(max_rounds),
                                "trees": int(booster.num_trees()), "s": time.perf_counter() - t})
            return booster

        self._undo.append((trainer_module, "_fit", original))
        trainer_module._fit = fit

    @contextlib.contextmanager
    def phase(self):
        self.current, self.fits = {}, []
        try:
            yield self.current
        finally:
            self.current = None

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def install_probes() -> Probes:
    from mlp_platform import lifecycle
    from mlp_platform.registry.mlflow_registry import ModelRegistry
    from mlp_platform.training import trainer

    probes = Probes()
    probes.wrap_fit(trainer)
    probes.wrap(lifecycle, "train_model", "train_model")
    probes.wrap(lifecycle, "_plots", "plots")
    probes.wrap(lifecycle, "registry_for", "mlflow_client")
    for method in ("log_training", "log_json", "load_json", "log_text", "set_version_tag", "alias", "set_alias",
                   "version_tags", "ref", "model_dir", "clear_alias"):
        probes.wrap(ModelRegistry, method, "mlflow_" + method)
    probes.wrap(lifecycle, "load_scorer", "load_scorer")
    probes.wrap(lifecycle, "prepare_window", "prepare_window")
    probes.wrap(lifecycle, "run_backtest", "backtest")
    for gate in ("data_gate", "consistency_gate", "latency_gate", "performance_gate", "bias_gate"):
        probes.wrap(lifecycle, gate, "gate_" + gate.removesuffix("_gate"))
    if hasattr(lifecycle, "backtest_figure"):
        probes.wrap(lifecycle, "backtest_figure", "backtest_plot")
    import mlflow

    probes.wrap(mlflow.MlflowClient, "log_figure", "mlflow_log_figure")
    probes.wrap(lifecycle, "write_model_card", "model_card")
    probes.wrap(lifecycle, "audit_for", "audit")
    return probes


def mlflow_total(parts: dict[str, float]) -> float:
    return sum(v for k, v in parts.items() if k.startswith("mlflow_"))


# --------------------------------------------------------------------------------------------------
# One repeat: train, evaluate, promote, retrain, evaluate vs champion, peer
# --------------------------------------------------------------------------------------------------

def timed_train(settings, training, config, probes: Probes) -> tuple[Any, Any, float, dict]:
    from mlp_platform import lifecycle

    marks: list[tuple[float, str]] = []

    def log(msg: str) -> None:
        marks.append((time.perf_counter(), msg))

    load = os.getloadavg()[0]
    with probes.phase() as parts:
        t0, c0 = time.perf_counter(), time.process_time()
        ref, trained, threshold = lifecycle.train_candidate(settings, training, config, log=log)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    fits = list(probes.fits)
    search_end = max(t for t, m in marks if m.startswith("search candidate"))
    final_end = next(t for t, m in marks if m.startswith("final model"))
    search_s = search_end - t0  # train_model is the first thing train_candidate does
    final_s = final_end - search_end
    out = {
        "wall_s": wall, "cpu_s": cpu, "load_1m": load, "parts": parts,
        "train_model_s": parts["train_model"],
        "search_s": search_s, "final_fit_and_metrics_s": final_s,
        "fingerprint_s": parts["train_model"] - search_s - final_s,
        "search_fits_s": sum(f["s"] for f in fits[:-1]), "final_fit_s": fits[-1]["s"],
        "search_fits": len(fits) - 1, "final_fit": fits[-1],
        "search_fit_rows": [f["rows"] for f in fits[:-1]],
        "plots_s": parts.get("plots", 0.0),
        "mlflow_log_register_s": parts.get("mlflow_log_training", 0.0),
        "mlflow_total_s": mlflow_total(parts),
        "other_s": wall - sum(parts.values()),
        "version": ref.version, "threshold": threshold, "trees": trained.best_iteration,
        "chosen": {k: trained.params[k] for k in ("num_leaves", "learning_rate", "min_child_samples",
                                                  "feature_fraction", "lambda_l2", "scale_pos_weight")},
        "search": trained.search, "split": trained.split.as_dict(), "metrics": trained.metrics,
        "config": trained.config,
    }
    return ref, trained, threshold, out


def timed_evaluate(settings, ref, training, probes: Probes) -> tuple[Any, dict]:
    from mlp_platform import lifecycle

    load = os.getloadavg()[0]
    with probes.phase() as parts:
        t0, c0 = time.perf_counter(), time.process_time()
        evaluation = lifecycle.evaluate_candidate(settings, ref, training)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gates = {g.name: {"passed": g.passed, "summary": g.summary} for g in evaluation.gates}
    return evaluation, {
        "wall_s": wall, "cpu_s": cpu, "load_1m": load, "parts": parts,
        "backtest_s": parts.get("backtest", 0.0),
        "gates_s": sum(v for k, v in parts.items() if k.startswith("gate_")),
        "gate_s": {k.removeprefix("gate_"): v for k, v in parts.items() if k.startswith("gate_")},
        "model_card_s": parts.get("model_card", 0.0),
        "backtest_plot_s": parts.get("backtest_plot", 0.0),
        "load_scorer_s": parts.get("load_scorer", 0.0),
        "prepare_window_s": parts.get("prepare_window", 0.0),
        "mlflow_s": mlflow_total(parts),
        "other_s": wall - sum(parts.values()),
        "champion_version": evaluation.champion_version, "passed": evaluation.passed, "gates": gates,
        "candidate": headline(evaluation.backtest["candidate"]),
        "window": evaluation.backtest["window"],
        "paired": evaluation.backtest.get("paired"),
    }


HEADLINE = ("roc_auc", "average_precision", "alert_budget_precision", "recall_at_fpr", "recall_at_threshold",
            "fpr_at_threshold", "precision_at_threshold", "approval_rate", "fraud_amount_caught")


def headline(report: dict) -> dict:
    out = {m: report.get(m) for m in HEADLINE}
    out["ci"] = {m: report["ci"].get(m) for m in HEADLINE if m in report.get("ci", {})}
    out["ci_method"] = report.get("ci_method", {}).get("method")
    out["n"], out["n_fraud"], out["threshold"] = report["n"], report["n_fraud"], report["threshold"]
    return out


def paired_auc(window, cand, other, n_boot: int, seed: int = 0) -> dict:
    """ROC AUC difference with the same day-block bootstrap run_backtest uses for AP (it has no AUC)."""
    import numpy as np

    from mlp_platform.evaluation.metrics import percentile_interval, resample_indices, roc_auc

    y = window["label"].to_numpy()
    _, codes = np.unique(window["event_date"].to_numpy(), return_inverse=True)
    diffs = [roc_auc(y[i], cand[i]) - roc_auc(y[i], other[i]) for i in resample_indices(len(y), n_boot, seed, codes)]
    low, high = percentile_interval([d for d in diffs if d == d])
    return {"diff": roc_auc(y, cand) - roc_auc(y, other), "low": low, "high": high}


def run_reference(kind: str, training, trained, threshold: float) -> dict:
    """A reference model on the candidate's own split, timed, then scored with the platform's backtest.

    kind "peer": ``lightgbm.LGBMClassifier(n_jobs=1)`` with default parameters (``verbose=-1`` only
    silences its log): fixed 100 trees, no early stopping, no search, no MLflow.
    kind "nosearch" (ablation): the trainer's own final fit (``trainer._fit``: early stopping on the
    validation window, ``max_rounds``, one thread, deterministic) with the search's first,
    LightGBM-default-like candidate, i.e. the platform minus the search and minus MLflow."""
    import lightgbm as lgb

    from mlp_platform.evaluation.backtest import prepare_window, run_backtest
    from mlp_platform.evaluation.metrics import threshold_for_fpr
    from mlp_platform.features.spec import default_spec
    from mlp_platform.lifecycle import TARGET_FPR
    from mlp_platform.training import trainer
    from mlp_platform.training.splits import select_days

    names = default_spec().feature_names
    matrix = trainer.matrix
    split, cfg = trained.split, trained.config
    frame = training.sort("event_time", "transaction_id")
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    train, valid = select_days(frame, split.train), select_days(frame, split.valid)
    x_train, y_train = matrix(train, names), train["label"].to_numpy()
    x_valid, y_valid = matrix(valid, names), valid["label"].to_numpy()
    t1 = time.perf_counter()
    if kind == "peer":
        model = lgb.LGBMClassifier(n_jobs=1, verbose=-1)
        model.fit(x_train, y_train)
        predict = lambda x: model.predict_proba(x)[:, 1]  # noqa: E731
        trees = model.booster_.num_trees()
        p = model.get_params()
        params = {k: p[k] for k in ("n_estimators", "num_leaves", "learning_rate", "min_child_samples", "n_jobs")}
    else:
        cand0 = trainer.draw_candidates(1, cfg["seed"])[0]
        params = trainer._base_params(cand0, y_train, cfg["seed"], cfg["num_threads"])
        booster = trainer._fit(params, x_train, y_train, x_valid, y_valid, cfg["max_rounds"],
                               cfg["early_stopping_rounds"])
        booster = booster if booster.best_iteration <= 0 else trainer._trim(booster)
        predict = booster.predict
        trees = booster.num_trees()
        params = {k: params[k] for k in ("num_leaves", "learning_rate", "min_child_samples", "feature_fraction",
                                         "lambda_l2", "scale_pos_weight", "num_threads")}
    t2 = time.perf_counter()
    ref_threshold = threshold_for_fpr(y_valid, predict(x_valid), TARGET_FPR)
    test = select_days(frame, split.test).sort("event_time", "transaction_id")
    predict(matrix(test, names))
    t3 = time.perf_counter()
    wall, cpu = t3 - t0, time.process_time() - c0
    # Quality, with the platform's own backtest code: the reference in the champion slot.
    window = prepare_window(test, history=training)  # as evaluate_candidate builds it
    x_window = matrix(window, names)
    cand, ref_scores = trained.booster.predict(x_window), predict(x_window)
    report = run_backtest(window, cand, threshold, ref_scores, ref_threshold, seed=0)
    report["paired"]["roc_auc"] = paired_auc(window, cand, ref_scores, n_boot=report["settings"]["n_boot"])
    return {
        "kind": kind, "wall_s": wall, "cpu_s": cpu, "load_1m": load, "matrix_s": t1 - t0, "fit_s": t2 - t1,
        "threshold_and_score_s": t3 - t2, "train_rows": int(len(y_train)), "trees": int(trees), "params": params,
        "threshold": float(ref_threshold),
        "reference": headline(report["champion"]), "candidate_recomputed": headline(report["candidate"]),
        "paired_candidate_minus_reference": report["paired"],
        "window_rows": window.height, "window_frauds": int(window["label"].sum()),
    }


def one_repeat(settings, training, config_for, probes: Probes, log) -> dict:
    from mlp_platform import lifecycle

    t = time.perf_counter()
    lifecycle.registry_for(settings).experiment_id()  # creates the SQLite store (schema migrations)
    store_init_s = time.perf_counter() - t
    out: dict[str, Any] = {"store_init_s": store_init_s, "load_start": os.getloadavg()}

    ref1, trained1, thr1, train1 = timed_train(settings, training, config_for(SEEDS[0]), probes)
    log(f"  train seed {SEEDS[0]}: {train1['wall_s']:.2f}s (search {train1['search_s']:.2f}, final fit+metrics "
        f"{train1['final_fit_and_metrics_s']:.2f}, MLflow {train1['mlflow_total_s']:.2f}); v{ref1.version}, "
        f"{train1['trees']} trees, threshold {thr1:.4g}")
    eval1_obj, eval1 = timed_evaluate(settings, ref1, training, probes)
    log(f"  evaluate (no champion): {eval1['wall_s']:.2f}s (backtest {eval1['backtest_s']:.2f}, gates "
        f"{eval1['gates_s']:.2f}); gates " + ", ".join(f"{k} {'ok' if v['passed'] else 'FAILED'}"
                                                      for k, v in eval1["gates"].items()))
    t = time.perf_counter()
    outcome = lifecycle.promote_candidate(settings, eval1_obj, run_id="bench")
    promote1_s = time.perf_counter() - t
    forced = False
    if not outcome.promoted:
        lifecycle.registry_for(settings).set_alias("champion", ref1.version)
        forced = True
        log(f"  promotion REFUSED ({outcome.reason}); champion alias set by hand for the next step")

    ref2, trained2, thr2, train2 = timed_train(settings, training, config_for(SEEDS[1]), probes)
    log(f"  train seed {SEEDS[1]}: {train2['wall_s']:.2f}s (search {train2['search_s']:.2f}, final fit+metrics "
        f"{train2['final_fit_and_metrics_s']:.2f}, MLflow {train2['mlflow_total_s']:.2f}); v{ref2.version}")
    eval2_obj, eval2 = timed_evaluate(settings, ref2, training, probes)
    if eval2["champion_version"] != ref1.version:
        fail(f"second evaluation did not compare against champion v{ref1.version}: {eval2['champion_version']}")
    t = time.perf_counter()
    outcome2 = lifecycle.promote_candidate(settings, eval2_obj, run_id="bench")
    promote2_s = time.perf_counter() - t
    log(f"  evaluate (vs champion v{ref1.version}): {eval2['wall_s']:.2f}s (backtest {eval2['backtest_s']:.2f}, "
        f"gates {eval2['gates_s']:.2f}); promoted: {outcome2.promoted}")

    peer = run_reference("peer", training, trained1, thr1)
    nosearch = run_reference("nosearch", training, trained1, thr1)
    log(f"  peer LGBMClassifier: {peer['wall_s']:.2f}s (fit {peer['fit_s']:.2f}); no-search ablation "
        f"{nosearch['wall_s']:.2f}s (fit {nosearch['fit_s']:.2f}, {nosearch['trees']} trees); AP candidate "
        f"{peer['candidate_recomputed']['average_precision']:.4f}, peer {peer['reference']['average_precision']:.4f}, "
        f"no-search {nosearch['reference']['average_precision']:.4f}")
    for ref in (peer, nosearch):
        if abs(eval1["candidate"]["average_precision"] - ref["candidate_recomputed"]["average_precision"]) > 1e-9:
            fail(f"candidate AP from evaluate_candidate {eval1['candidate']['average_precision']} != recomputed "
                 f"{ref['candidate_recomputed']['average_precision']}")
    out.update(train1=train1, eval1=eval1, promote1_s=promote1_s, promoted1=outcome.promoted,
               promote1_reason=outcome.reason, champion_forced=forced, train2=train2, eval2=eval2,
               promote2_s=promote2_s, promoted2=outcome2.promoted, promote2_reason=outcome2.reason, peer=peer,
               nosearch=nosearch,
               load_end=os.getloadavg())
    return out


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------

def med(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict) -> str:
    if s["n"] == 1:
        return f"{s['median']:.2f}"
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def summarise(runs: list[dict]) -> dict:
    def col(path: str) -> dict:
        vals = []
        for r in runs:
            v: Any = r
            for p in path.split("."):
                v = v[p]
            vals.append(float(v))
        return med(vals)

    keys = ["store_init_s", "promote1_s", "promote2_s"]
    for t in ("train1", "train2"):
        keys += [f"{t}.{k}" for k in ("wall_s", "cpu_s", "train_model_s", "search_s", "search_fits_s",
                                      "final_fit_and_metrics_s", "final_fit_s", "fingerprint_s", "plots_s",
                                      "mlflow_log_register_s", "mlflow_total_s", "other_s")]
    for e in ("eval1", "eval2"):
        keys += [f"{e}.{k}" for k in ("wall_s", "cpu_s", "backtest_s", "gates_s", "model_card_s", "backtest_plot_s",
                                      "load_scorer_s",
                                      "prepare_window_s", "mlflow_s", "other_s")]
        keys += [f"{e}.gate_s.{g}" for g in ("data", "consistency", "latency", "performance", "bias")]
    keys += [f"{r}.{k}" for r in ("peer", "nosearch") for k in ("wall_s", "cpu_s", "matrix_s", "fit_s",
                                                                  "threshold_and_score_s")]
    s = {k: col(k) for k in keys}
    s["ratio_train_candidate_to_peer"] = s["train1.wall_s"]["median"] / s["peer.wall_s"]["median"]
    s["ratio_train_model_to_peer"] = s["train1.train_model_s"]["median"] / s["peer.wall_s"]["median"]
    s["ratio_lifecycle_to_peer"] = ((s["train1.wall_s"]["median"] + s["eval1.wall_s"]["median"])
                                    / s["peer.wall_s"]["median"])
    s["ratio_train_candidate_to_nosearch"] = s["train1.wall_s"]["median"] / s["nosearch.wall_s"]["median"]
    return s


def ci_text(value, ci) -> str:
    if value is None:
        return "–"
    if not ci:
        return f"{value:.4f}"
    return f"{value:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"


def print_report(name: str, result: dict) -> None:
    s, runs, wh = result["summary"], result["runs"], result["warehouse"]
    last = runs[-1]
    n = len(runs)
    print(f"\n### {name}: {wh['transactions']:,} transactions, training set {result['training_rows']:,} rows "
          f"({result['training_frauds']:,} frauds); {n} repeat(s)")
    print(f"warehouse build (once, not the subject): ingest {wh['ingest_s']:.2f}s + dbt features "
          f"{wh['dbt_features_s']:.2f}s + dbt training {wh['dbt_training_s']:.2f}s = {wh['total_s']:.2f}s; "
          f"load_training_set {result['load_training_set_s']:.2f}s")
    print(f"TrainingConfig: {json.dumps(result['config'])}")
    print(f"split: {json.dumps(last['train1']['split'])}")
    print("\n| step (seconds, wall) | median (min–max) |")
    print("|---|---:|")
    rows = [
        ("MLflow store creation (fresh SQLite store, once per store)", "store_init_s"),
        ("**train_candidate**, seed 7 (first model)", "train1.wall_s"),
        ("· train_model", "train1.train_model_s"),
        ("·· search (prequential folds)", "train1.search_s"),
        ("··· of which LightGBM fits", "train1.search_fits_s"),
        ("·· final fit + valid/test metrics", "train1.final_fit_and_metrics_s"),
        ("··· of which the final LightGBM fit", "train1.final_fit_s"),
        ("·· data fingerprint (hash of the training set)", "train1.fingerprint_s"),
        ("· plots (matplotlib, for MLflow)", "train1.plots_s"),
        ("· MLflow log + register (log_training)", "train1.mlflow_log_register_s"),
        ("· MLflow total (log_training, log_json, client)", "train1.mlflow_total_s"),
        ("· other (threshold, test scoring, windows)", "train1.other_s"),
        ("train_candidate CPU time", "train1.cpu_s"),
        ("**evaluate_candidate**, no champion", "eval1.wall_s"),
        ("· backtest (run_backtest)", "eval1.backtest_s"),
        ("· gates (all five)", "eval1.gates_s"),
        ("·· latency gate", "eval1.gate_s.latency"),
        ("·· consistency gate", "eval1.gate_s.consistency"),
        ("·· bias gate", "eval1.gate_s.bias"),
        ("·· data gate", "eval1.gate_s.data"),
        ("· backtest plot (matplotlib, for MLflow)", "eval1.backtest_plot_s"),
        ("· model card", "eval1.model_card_s"),
        ("· load model (serving loader)", "eval1.load_scorer_s"),
        ("· prepare window", "eval1.prepare_window_s"),
        ("· MLflow reads/writes", "eval1.mlflow_s"),
        ("· other (scoring the window)", "eval1.other_s"),
        ("promote_candidate (first model)", "promote1_s"),
        ("**train_candidate**, seed 8", "train2.wall_s"),
        ("· search", "train2.search_s"),
        ("· final fit + metrics", "train2.final_fit_and_metrics_s"),
        ("· MLflow total", "train2.mlflow_total_s"),
        ("**evaluate_candidate**, vs champion", "eval2.wall_s"),
        ("· backtest (candidate + champion, paired)", "eval2.backtest_s"),
        ("· gates", "eval2.gates_s"),
        ("· other", "eval2.other_s"),
        ("promote_candidate (replaces champion)", "promote2_s"),
        ("**peer** LGBMClassifier: matrix + fit + threshold + score", "peer.wall_s"),
        ("· fit", "peer.fit_s"),
        ("peer CPU time", "peer.cpu_s"),
        ("**no-search ablation** (trainer's final fit, default-like params): matrix + fit + threshold + score",
         "nosearch.wall_s"),
        ("· fit (early stopping on the validation window)", "nosearch.fit_s"),
    ]
    for label, key in rows:
        print(f"| {label} | {fmt(s[key])} |")
    print(f"\nratios (medians): train_candidate / peer {s['ratio_train_candidate_to_peer']:.1f}x, "
          f"train_model / peer {s['ratio_train_model_to_peer']:.1f}x, (train_candidate + evaluate_candidate) / peer "
          f"{s['ratio_lifecycle_to_peer']:.1f}x; train_candidate / no-search ablation "
          f"{s['ratio_train_candidate_to_nosearch']:.1f}x")
    print(f"search fits: {last['train1']['search_fits']} (rows {last['train1']['search_fit_rows']}); final fit "
          f"{last['train1']['final_fit']}; chosen {last['train1']['chosen']}")
    for i, r in enumerate(runs):
        print(f"repeat {i + 1}: load {tuple(round(x, 2) for x in r['load_start'])} -> "
              f"{tuple(round(x, 2) for x in r['load_end'])}")
    quality = [(r["eval1"]["candidate"], r["eval2"]["candidate"], r["peer"]["reference"], r["nosearch"]["reference"])
               for r in runs]
    same = all(q == quality[0] for q in quality)
    r = runs[0]
    t1, e1, e2, p, a = r["train1"], r["eval1"], r["eval2"], r["peer"], r["nosearch"]
    c = e1["candidate"]
    print(f"\nquality on the out-of-time window {e1['window']} — "
          f"{'identical in all ' + str(n) + ' repeats' if same else 'DIFFERS between repeats: see the JSON'}")
    print(f"candidate v{t1['version']} (seed 7): operating threshold {t1['threshold']:.6g} (1% FPR on the validation "
          f"window), {t1['trees']} trees; peer threshold {p['threshold']:.6g}, {p['trees']} trees; no-search "
          f"threshold {a['threshold']:.6g}, {a['trees']} trees")
    print("| metric | candidate (platform) [95% CI] | peer LGBMClassifier [95% CI] | candidate − peer [95% CI] "
          "| no-search ablation [95% CI] | candidate − no-search [95% CI] |")
    print("|---|---|---|---|---|---|")
    for m in ("roc_auc", "average_precision", "alert_budget_precision", "recall_at_fpr", "recall_at_threshold",
              "fpr_at_threshold", "precision_at_threshold"):
        cells = [ci_text(c[m], c["ci"].get(m))]
        for ref in (p, a):
            d = (ref["paired_candidate_minus_reference"] or {}).get(m)
            diff = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d and d.get("low") is not None else "–"
            cells += [ci_text(ref["reference"][m], ref["reference"]["ci"].get(m)), diff]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print(f"CI method: {c['ci_method']} bootstrap (candidate, peer); paired differences: day-block bootstrap")
    print("gates (first model): " + "; ".join(f"{k}: {'PASS' if v['passed'] else 'FAIL'} ({v['summary']})"
                                              for k, v in e1["gates"].items()))
    print(f"promotion 1: {r['promote1_reason']}" + (" [champion forced by the bench]" if r["champion_forced"] else ""))
    print("gates (seed 8 vs champion): " + "; ".join(f"{k}: {'PASS' if v['passed'] else 'FAIL'} ({v['summary']})"
                                                     for k, v in e2["gates"].items()))
    print(f"promotion 2: {r['promote2_reason']}; seed-8 candidate: "
          + ", ".join(f"{m} {e2['candidate'][m]:.4f}" for m in ("roc_auc", "average_precision",
                                                                 "alert_budget_precision", "recall_at_fpr")))


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

def run_dataset(name: str, source: str, dataset: Path, repeats: int, config_kwargs: dict, tmp: Path,
                probes: Probes) -> dict:
    from mlp_platform import lifecycle
    from mlp_platform.training.trainer import TrainingConfig

    work = tmp / name
    base = settings_for(source, work / "warehouse", dataset)
    print(f"\n[{name}] building the warehouse ({source}, {base.source_days()[0]}..{base.source_days()[1]}) ...",
          flush=True)
    warehouse = build_warehouse(base, work)
    print(f"[{name}] warehouse: {warehouse['transactions']:,} transactions, training set "
          f"{warehouse['training_rows']:,} rows, built in {warehouse['total_s']:.1f}s", flush=True)
    t = time.perf_counter()
    training = lifecycle.load_training_set(base)
    load_s = time.perf_counter() - t
    if training.height != warehouse["training_rows"]:
        fail(f"load_training_set returned {training.height} rows, the warehouse has {warehouse['training_rows']}")

    from mlp_platform.deciders.declaration import load_decider

    gap_days = load_decider(base.deciders_dir).labels.delay_days

    def config_for(seed: int) -> TrainingConfig:
        return TrainingConfig(seed=seed, gap_days=gap_days, **config_kwargs)

    runs = []
    for i in range(repeats):
        settings = dataclasses.replace(base, data_dir=work / f"run-{i}")
        print(f"[{name}] repeat {i + 1}/{repeats} (load {os.getloadavg()[0]:.2f})", flush=True)
        runs.append(one_repeat(settings, training, config_for, probes,
                               lambda msg: print(f"[{name}] {msg}", flush=True)))
    result = {"warehouse": warehouse, "load_training_set_s": load_s, "training_rows": training.height,
              "training_frauds": int(training["label"].sum()),
              "config": dataclasses.asdict(config_for(SEEDS[0])) | {"seeds": list(SEEDS)}, "runs": runs}
    result["summary"] = summarise(runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-repeats", type=int, default=3)
    parser.add_argument("--handbook-repeats", type=int, default=2)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-handbook", action="store_true")
    parser.add_argument("--dataset", default=os.environ.get("MLP_HANDBOOK_PATH", str(DEFAULT_DATASET)))
    parser.add_argument("--handbook-candidates", type=int, default=None,
                        help="TrainingConfig.n_candidates for the handbook (default: the platform default, 6)")
    parser.add_argument("--handbook-negative-sample", type=float, default=None,
                        help="TrainingConfig.search_negative_sample for the handbook (default: 0.3)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--json", dest="json_out", help="write every figure to this JSON file")
    args = parser.parse_args()

    dataset = Path(args.dataset).resolve()
    if not args.skip_handbook and not dataset.exists():
        fail(f"dataset not found: {dataset} (set MLP_HANDBOOK_PATH or --dataset)")
    from importlib import metadata

    from mlp_platform.features.dbt_codegen import spec_macro_in_sync
    from mlp_platform.features.spec import default_spec

    if not spec_macro_in_sync(DBT_PROJECT, default_spec()):
        fail("dbt_project/macros/generated/feature_spec.sql is out of date: run `make prepare` first")

    info = machine_info()
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    info["git_head"] = git("rev-parse", "--short", "HEAD")
    info["git_modified"] = git("status", "--porcelain", "--untracked-files=no").splitlines()
    for pkg in ("lightgbm", "mlflow", "scikit-learn", "numpy"):
        info[pkg] = metadata.version(pkg)
    # One-off imports a worker pays once (timed apart so the first repeat is not charged with them).
    t = time.perf_counter()
    import lightgbm  # noqa: F401
    import matplotlib  # noqa: F401
    import mlflow  # noqa: F401
    import mlflow.lightgbm  # noqa: F401

    from mlp_platform import lifecycle  # noqa: F401
    info["imports_s"] = time.perf_counter() - t
    print(f"{info['date_utc']}\nmachine: nproc={info['nproc']}, CPU {info['cpu']}, {info['ram_gib']} GiB RAM; "
          f"Python {info['python']}, LightGBM {info['lightgbm']}, MLflow {info['mlflow']}, scikit-learn "
          f"{info['scikit-learn']}, polars {info['polars']}, DuckDB {info['duckdb']}; load avg {info['load_avg_start']}; "
          f"imports (mlflow, lightgbm, matplotlib, lifecycle) {info['imports_s']:.2f}s\n"
          f"git {info['git_head']}, modified: {info['git_modified']}", flush=True)

    probes = install_probes()
    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-training-"))
    results: dict[str, Any] = {"machine": info, "dataset": str(dataset)}
    start = time.perf_counter()
    try:
        if not args.skip_demo:
            results["demo"] = run_dataset("demo", "synthetic", dataset, args.demo_repeats, {}, tmp, probes)
        if not args.skip_handbook:
            kwargs = {}
            if args.handbook_candidates is not None:
                kwargs["n_candidates"] = args.handbook_candidates
            if args.handbook_negative_sample is not None:
                kwargs["search_negative_sample"] = args.handbook_negative_sample
            results["handbook"] = run_dataset("handbook", "handbook", dataset, args.handbook_repeats, kwargs, tmp,
                                              probes)
    finally:
        probes.restore()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_avg_end"] = os.getloadavg()
    results["bench_wall_s"] = time.perf_counter() - start
    results["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print("\n" + "=" * 100)
    print(f"Model lifecycle benchmark — {info['date_utc']}; load avg start {info['load_avg_start']}, end "
          f"{tuple(round(x, 2) for x in results['machine']['load_avg_end'])}; wall {results['bench_wall_s']:.0f}s; "
          f"peak RSS {results['self_peak_rss_mb']:,.0f} MB")
    for name in ("demo", "handbook"):
        if name in results:
            print_report(name, results[name])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
    main()
