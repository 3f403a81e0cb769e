"""Benchmark: the serving paths of submitted models (issue 19, part 2: "other flavours serve through a
documented slower path with their measured latency").

Not a test: it measures, on this machine, in one process, one decision with adverse-action reasons
(``ApplicationDecider.decide`` on the German holdout applications, every answer computed) through:

* ``lightgbm``: a submitted LightGBM booster (monotone, 120 trees) on the compiled fast scorer;
* ``lightgbm_again``: the same scorer a second time (the A/A noise band of this run);
* ``sklearn_logistic``: a scikit-learn pipeline (median imputer, scaler, logistic regression),
  MLflow skops format, on the generic estimator path (``predict_proba`` on a frame, occlusion
  reasons: one extra call on n + 1 rows for a decision that needs reasons);
* ``sklearn_hgb``: a scikit-learn HistGradientBoostingClassifier (monotone constraints, imputer in
  front), the same generic path.

Rounds are interleaved, medians over rounds (min-max). It also times a whole submission (submit +
holdout evaluation + gates + verdict) per flavour. The latency gate's budget of the credit decider
(``gates.latency_p99_budget_us``) is printed beside each p99: the gate decides on that figure.

    .venv/bin/python bench/bench_submission.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import machine  # noqa: E402


def pct(values, q):
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_submission_"))
    os.environ["MLP_DATA_DIR"] = str(tmp / "data")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import lightgbm as lgb
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlp_platform import application_lifecycle as lifecycle
    from mlp_platform.deciders.declaration import load_decider
    from mlp_platform.evaluation.cv_backtest import CVBacktestConfig
    from mlp_platform.registry.submission import submit_model
    from mlp_platform.runtime.loading import registry_loader
    from mlp_platform.serving.application import ApplicationDecider
    from mlp_platform.settings import load_settings

    settings = load_settings()
    if not settings.german_credit_path.exists():
        print("the German credit data is not mounted (MLP_GERMAN_CREDIT_PATH)")
        return 1
    credit = load_decider(settings.deciders_dir, "credit")
    data = lifecycle.load_application_data(settings, credit, "german")
    frame = lifecycle.training_export(credit, data)
    names = credit.spec.feature_names
    x, y = frame.select(names).to_pandas(), frame["label"].to_numpy()
    constraints = [credit.model.monotone_constraints.get(n, 0) for n in names]

    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 8, "learning_rate": 0.05, "seed": 1,
                         "monotone_constraints": constraints}, lgb.Dataset(x.to_numpy(), y, feature_name=names), 120)
    booster.save_model(str(tmp / "lgb.txt"))
    sources = {"lightgbm": tmp / "lgb.txt"}
    for name, model in {
        "sklearn_logistic": make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                          StandardScaler(), LogisticRegression(C=0.1, max_iter=500)),
        "sklearn_hgb": make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                     HistGradientBoostingClassifier(max_iter=120, max_leaf_nodes=8,
                                                                    monotonic_cst=constraints, random_state=0)),
    }.items():
        model.fit(x, y)
        mlflow.sklearn.save_model(model, str(tmp / name), signature=infer_signature(x, model.predict_proba(x)[:, 1]),
                                  skops_trusted_types=["numpy.dtype",
                                                       "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"])
        sources[name] = tmp / name

    budget = float(credit.gates["latency_p99_budget_us"])
    deciders, pipeline_s, verdicts = {}, {}, {}
    for name, source in sources.items():
        t0 = time.perf_counter()
        result = submit_model(settings, credit, source, submitted_by="bench")
        verdict = lifecycle.judge_submission(settings, credit, result.ref.version, "german", run_id="bench",
                                             actor="bench", config=CVBacktestConfig(n_boot=500))
        pipeline_s[name] = time.perf_counter() - t0
        verdicts[name] = {g.name: g.passed for g in verdict.gates}
        loaded = registry_loader(settings, decider=credit)(result.ref.version)
        deciders[name] = ApplicationDecider(credit, loaded.scorer, loaded.populations, version=result.ref.version)
        if name == "lightgbm":
            deciders["lightgbm_again"] = ApplicationDecider(credit, loaded.scorer, loaded.populations,
                                                            version=result.ref.version)
        print(f"{name}: submitted and judged in {pipeline_s[name]:.1f} s; gates {verdicts[name]}", flush=True)
    requests = verdict.candidate.applications.to_dicts()

    p50 = {k: [] for k in deciders}
    p99 = {k: [] for k in deciders}
    reasons = {k: [] for k in deciders}
    order = list(deciders)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            d = deciders[name]
            for req in requests[:30]:
                d.decide(req)
            times, with_reasons = [], []
            for _ in range(3):
                for req in requests:
                    t = time.perf_counter_ns()
                    out = d.decide(req)
                    elapsed = (time.perf_counter_ns() - t) / 1000
                    times.append(elapsed)
                    if out.reasons:
                        with_reasons.append(elapsed)
            p50[name].append(pct(times, 50))
            p99[name].append(pct(times, 99))
            reasons[name].append(pct(with_reasons, 99) if with_reasons else float("nan"))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} p99 {p99[k][-1]:.0f} us" for k in order), flush=True)

    def rng(v, digits=0):
        return f"{statistics.median(v):,.{digits}f} ({min(v):,.{digits}f}-{max(v):,.{digits}f})"

    base = p99["lightgbm"]
    lines = [f"{len(requests)} holdout applications x 3 per round, {args.rounds} rounds; latency budget {budget:,.0f} us"]
    for name in order:
        ratio = [a / b for a, b in zip(p99[name], base, strict=True)]
        lines.append(f"{name:<17} p50 µs {rng(p50[name])}  p99 µs {rng(p99[name])}  p99 with reasons µs "
                     f"{rng(reasons[name])}  p99 / lightgbm {rng(ratio, 2)}")
    lines.append("submit + judge (s): " + ", ".join(f"{k} {v:.1f}" for k, v in pipeline_s.items()))
    lines.append("latency gate: " + ", ".join(f"{k} {'pass' if v['latency'] else 'FAIL'}" for k, v in verdicts.items()))
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(),
            "p50_us": p50, "p99_us": p99, "p99_with_reasons_us": reasons, "pipeline_s": pipeline_s,
            "gates": verdicts, "table": lines}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
