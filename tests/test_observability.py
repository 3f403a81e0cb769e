"""Tests of deploy/observability: the Prometheus alert rules pass `promtool check rules` and their unit
tests (`promtool test rules`), and a weakened rule fails them; every alert has a firing and a quiet
scenario and a README section; the example Prometheus config is valid; the Grafana dashboard and its
provisioning are well formed; and every metric name (and matcher label) used by a rule or a panel is
one the scoring service really exports (a small PromQL metric-name extractor, unit-tested here).

promtool comes from Debian's package `prometheus` (`make tools`); without it these tests fail."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlp_platform.review.metrics import ReviewMetrics
from mlp_platform.serving.deciders import DeciderMetrics
from mlp_platform.serving.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]
OBS = ROOT / "deploy" / "observability"
RULES = OBS / "prometheus" / "alert_rules.yml"
RULES_TEST = OBS / "prometheus" / "alert_rules_test.yml"
PROM_CONFIG = OBS / "prometheus" / "prometheus.yml"
DASHBOARD = OBS / "grafana" / "dashboards" / "mlp_scoring.json"
PROVISIONING = OBS / "grafana" / "provisioning"
README = OBS / "README.md"

# Series that are not the scoring service's: Prometheus' own `up`, and the Dagster run-failure
# sensor's textfile metrics (mlp_platform/observability.py), scraped through node-exporter.
EXTERNAL_METRICS = {"up", "mlp_dagster_run_failures_total", "mlp_dagster_last_run_failure_timestamp_seconds"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time
TEXTFILE_LABELS = {"exported_job"}  # the textfile's own `job` label, renamed by Prometheus (honor_labels: false)

# Label values the service uses (source of each set checked below), for equality matchers.
KNOWN_VALUES = {
    "decision": {"approve", "review", "decline"},
    "arm": {"champion", "challenger"},
    "outcome": {"loaded", "refused", "routing_invalid"},
    "statistic": {"psi", "ks", "wasserstein"},
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make tools` installs it (Debian package prometheus)"
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=300)


# --- the PromQL metric-name extractor -------------------------------------------------------------

KEYWORDS = {
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
    # binary operators and modifiers
    "and", "or", "unless", "atan2", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "start", "end",
    # number literals spelled as words
    "inf", "nan",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(0[xX][0-9a-fA-F]+|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)[A-Za-z0-9_]*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)\s*,?')


def _skip_string(expr: str, i: int) -> int:
    quote, i = expr[i], i + 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    if i >= len(expr):
        raise ValueError(f"unterminated string in {expr!r}")
    return i + 1


def _close(expr: str, i: int, opening: str, closing: str) -> int:
    """Index after the bracket that closes expr[i] (strings inside are skipped)."""
    depth = 0
    while i < len(expr):
        ch = expr[i]
        if ch in "\"'`":
            i = _skip_string(expr, i)
            continue
        depth += ch == opening
        depth -= ch == closing
        i += 1
        if depth == 0:
            return i
    raise ValueError(f"unbalanced {opening}{closing} in {expr!r}")


def _parse_matchers(body: str) -> list[tuple[str, str, str]]:
    """`{a="x", b=~"y"}` without the braces -> [(label, op, value)] (values unquoted, unescaped)."""
    out, pos = [], 0
    while pos < len(body.strip()):
        m = _MATCHER.match(body, pos)
        if not m:
            raise ValueError(f"cannot parse label matchers {{{body}}}")
        raw = m.group(3)
        value = raw[1:-1] if raw[0] == "`" else raw[1:-1].encode().decode("unicode_escape")
        out.append((m.group(1), m.group(2), value))
        pos = m.end()
    return out


def promql_selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The vector selectors of a PromQL expression as (metric name, label matchers).

    Identifiers count as metric names unless they are followed by `(` (functions), are PromQL
    keywords/aggregators, are a label list after by/without/on/ignoring/group_left/group_right, sit
    inside strings, `{...}` matchers or `[...]` ranges/subquery steps, are numbers or durations
    (`5m`, `1e-9`, `0x1f`) or Grafana variables (`$job`, `${x}`). `{__name__="m"}` also names m."""
    out: list[tuple[str, list[tuple[str, str, str]]]] = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch.isspace():
            i += 1
        elif ch == "#":  # comment to end of line
            while i < n and expr[i] != "\n":
                i += 1
        elif ch in "\"'`":
            i = _skip_string(expr, i)
        elif ch == "$":  # Grafana variable: $name, ${name}, ${name:format}
            i += 1
            if i < n and expr[i] == "{":
                i = _close(expr, i, "{", "}")
            else:
                m = _IDENT.match(expr, i)
                i = m.end() if m else i
        elif ch == "[":
            i = _close(expr, i, "[", "]")
        elif ch == "{":  # matchers without a metric name: only __name__ can name one
            end = _close(expr, i, "{", "}")
            matchers = _parse_matchers(expr[i + 1:end - 1])
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            if names:
                out.append((names[0], [mt for mt in matchers if mt[0] != "__name__"]))
            i = end
        elif ch.isdigit() or (ch == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = _NUMBER.match(expr, i)
            i = m.end()
        elif _IDENT.match(expr, i):
            m = _IDENT.match(expr, i)
            word, i = m.group(0), m.end()
            j = i
            while j < n and expr[j].isspace():
                j += 1
            lower = word.lower()
            if lower in LABEL_LIST_KEYWORDS:
                if j < n and expr[j] == "(":
                    i = _close(expr, j, "(", ")")
                continue
            if lower in KEYWORDS or (j < n and expr[j] == "("):
                continue
            matchers: list[tuple[str, str, str]] = []
            if j < n and expr[j] == "{":
                end = _close(expr, j, "{", "}")
                matchers = _parse_matchers(expr[j + 1:end - 1])
                i = end
            out.append((word, matchers))
        else:
            i += 1
    return out


def promql_metric_names(expr: str) -> set[str]:
    return {name for name, _ in promql_selectors(expr)}


# --- what the service exports ---------------------------------------------------------------------

def exported_families() -> dict[str, set[str]]:
    """Metric family -> the series names ServiceMetrics exports for it, from its registry's families
    and their types (prometheus_client names a counter family without its `_total`)."""
    families: dict[str, set[str]] = {}
    metrics = ServiceMetrics()
    DeciderMetrics(metrics.registry)  # the application deciders' series, in the same process
    ReviewMetrics(metrics.registry)  # the review queue's
    for family in metrics.registry.collect():
        if family.type == "counter":
            families[family.name] = {f"{family.name}_total"}
        elif family.type == "histogram":
            families[family.name] = {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "gauge":
            families[family.name] = {family.name}
        else:
            raise AssertionError(f"unexpected metric type {family.type} of {family.name}")
    return families


def exported_metric_names() -> set[str]:
    return set().union(*exported_families().values())


def exported_labels() -> dict[str, set[str]]:
    """Series name -> its label names, from the exposition of a ServiceMetrics whose labelled metrics
    each got one child (a labelled metric without children exports nothing)."""
    metrics = ServiceMetrics()
    deciders = DeciderMetrics(metrics.registry)
    review = ReviewMetrics(metrics.registry)
    for metric in [*vars(metrics).values(), *vars(deciders).values(), *vars(review).values()]:
        if isinstance(metric, Counter | Gauge | Histogram):
            labelnames = metric._labelnames
        else:
            continue
        child = metric.labels(*["probe"] * len(labelnames)) if labelnames else metric
        if isinstance(metric, Histogram):
            child.observe(0.001)
        elif isinstance(metric, Counter):
            child.inc()
        else:
            child.set(1)
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    assert "mlp_requests_total" in labels, generate_latest(metrics.registry).decode()[:500]
    return labels


def unknown_metrics(exprs: list[str], allowed: set[str]) -> dict[str, set[str]]:
    """expression -> metric names it uses that are not allowed (empty when all are known)."""
    found = {expr: promql_metric_names(expr) - allowed for expr in exprs}
    return {expr: names for expr, names in found.items() if names}


def bad_matchers(exprs: list[str], labels: dict[str, set[str]]) -> list[str]:
    """Matchers on labels a series does not have, or equality on a label value the service never uses."""
    problems = []
    for expr in exprs:
        for name, matchers in promql_selectors(expr):
            if name not in labels:
                continue
            for label, op, value in matchers:
                if label not in labels[name] | TARGET_LABELS:
                    problems.append(f"{name} has no label {label!r} (in {expr!r})")
                elif (op == "=" and label in KNOWN_VALUES and "$" not in value  # $var: Grafana's
                      and value not in KNOWN_VALUES[label]):
                    problems.append(f"{name}{{{label}={value!r}}}: value never exported (in {expr!r})")
    return problems


def rule_exprs(path: Path = RULES) -> dict[str, str]:
    doc = yaml.safe_load(path.read_text())
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"] if "alert" in rule}


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
            assert m, f"variable {var['name']}: expected label_values(<selector>, <label>), got {query!r}"
            exprs.append(m.group(1))
    return exprs


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


# --- extractor unit tests -------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "expected"), [
    ("up", {"up"}),
    ('sum by (le, arm) (rate(mlp_request_latency_seconds_bucket{endpoint="score", arm=~"champ.*"}[5m]))',
     {"mlp_request_latency_seconds_bucket"}),
    ('histogram_quantile(0.99, sum(rate(a_bucket[$__rate_interval])) by (le))', {"a_bucket"}),
    ('sum(rate(x_total{job="$job"}[1h:5m])) / on (job) group_left (instance) max(y) offset 1d', {"x_total", "y"}),
    ('label_replace(m1, "dst", "$1", "src", "(.*)") or vector(0)', {"m1"}),
    ('a{b="sum(c_total)", d=~"{e}"} and ignoring (f, g) h_total', {"a", "h_total"}),
    ('time() - max without (instance) (ts_seconds) > 2 * 86400 and 1e-9 < bool 0x1f', {"ts_seconds"}),
    ('{__name__="named_by_matcher", job="x"} unless absent_over_time(other[15m])', {"named_by_matcher", "other"}),
    ('SUM BY (arm) (rate(m_total[5m])) > Inf', {"m_total"}),
    ('topk(10, count_values("v", build_info)) # a comment naming not_a_metric', {"build_info"}),
    ('m @ 1700000000 offset -5m', {"m"}),
    ("sum(rate(mlp_errors_total{type!~'validation|unauthorized.*'}[10m])) * 60 > 1", {"mlp_errors_total"}),
])
def test_extractor_finds_the_metric_names(expr, expected):
    assert promql_metric_names(expr) == expected


def test_extractor_reads_matchers():
    [(name, matchers)] = promql_selectors('rate(mlp_requests_total{status=~"5..", endpoint = "/v1/score"}[5m])')
    assert name == "mlp_requests_total"
    assert matchers == [("status", "=~", "5.."), ("endpoint", "=", "/v1/score")]


def test_extractor_rejects_unbalanced_input():
    with pytest.raises(ValueError):
        promql_selectors('sum(rate(x{a="b"[5m]))')


# --- the exported names -----------------------------------------------------------------------------

def test_type_derived_names_are_what_the_service_exposes():
    derived = exported_metric_names()
    exposed = set(exported_labels())
    assert derived <= exposed, derived - exposed
    # the families the rules and the dashboard are built on, including the drift/skew gauges
    assert {"mlp_requests_total", "mlp_request_latency_seconds_bucket", "mlp_score_sum",
            "mlp_feature_drift", "mlp_prediction_drift", "mlp_feature_skew_mismatch_rate",
            "mlp_drift_report_timestamp_seconds", "mlp_degraded_decisions_total"} <= derived


def test_known_label_values_are_the_ones_in_the_source():
    sources = "".join((ROOT / "mlp_platform" / "serving" / f).read_text()
                      for f in ("service.py", "routing.py", "api_models.py"))
    for label in ("decision", "arm", "outcome"):
        for value in KNOWN_VALUES[label]:
            assert f'"{value}"' in sources, f"{label}={value} no longer appears in the serving code"


# --- alert rules --------------------------------------------------------------------------------------

def test_promtool_check_rules():
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = run_promtool("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_scenario():
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(rule_exprs())
    assert alerts - firing == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_severity_annotations_and_a_readme_section():
    doc = yaml.safe_load(RULES.read_text())
    readme = README.read_text()
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            assert rule["labels"]["severity"] in {"page", "ticket"}, name
            assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
            anchor = f"#{name.lower()}"
            assert rule["annotations"]["runbook"].endswith(f"README.md{anchor}"), name
            assert re.search(rf"^###\s+{name}\s*$", readme, re.M), f"README has no section for {name}"


def _weakened(tmp_path: Path, alert: str, mutate) -> Path:
    """A copy of the rules with one alert mutated, next to the unit tests of that alert only."""
    rules = yaml.safe_load(RULES.read_text())
    found = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert len(found) == 1
    mutate(found[0])
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["tests"] = [t for t in tests["tests"] if any(c["alertname"] == alert for c in t["alert_rule_test"])]
    for t in tests["tests"]:
        t["alert_rule_test"] = [c for c in t["alert_rule_test"] if c["alertname"] == alert]
    assert tests["tests"]
    (tmp_path / "alert_rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    path = tmp_path / "alert_rules_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return path


def _replace(field: str, old: str, new: str):
    def mutate(rule):
        assert old in rule[field], (rule[field], old)
        rule[field] = rule[field].replace(old, new)
    return mutate


MUTATIONS = {
    "latency budget loosened": ("MlpScoringLatencyP99High", _replace("expr", "> 0.002", "> 0.005")),
    "latency budget tightened": ("MlpScoringLatencyP99High", _replace("expr", "> 0.002", "> 0.0015")),
    "target-down wait longer": ("MlpScoringTargetDown", _replace("for", "2m", "10m")),
    "no-decisions without absent()": ("MlpNoDecisions", _replace(
        "expr", 'or\n  absent_over_time(mlp_decisions_total{job="mlp-scoring"}[15m])', "")),
    "no-decisions ignores up": ("MlpNoDecisions", _replace("expr", "== 1", ">= 0")),
    "degraded threshold raised": ("MlpDegradedDecisionsHigh", _replace("expr", "> 0.05", "> 0.2")),
    "shadow drop guard removed": ("MlpShadowDroppedHigh", _replace(
        "expr", 'or sum by (model_version) (rate(mlp_shadow_dropped_total{job="mlp-scoring"}[10m])) * 0', "")),
    "refusal outcome forgotten": ("MlpModelLoadRefused", _replace("expr", "refused|routing_invalid", "refused")),
    "feature drift on KS": ("MlpFeatureDriftHigh", _replace("expr", 'statistic="psi"', 'statistic=~"psi|ks"')),
    "stale report after 3 days": ("MlpDriftReportStale", _replace("expr", "2 * 86400", "3 * 86400")),
    "shadow volume floor dropped": ("MlpShadowDisagreementHigh", _replace("expr", "> 100", "> 0")),
    "pipeline failure severity": ("MlpPipelineFailingRepeatedly", lambda r: r["labels"].update(severity="ticket")),
    "decider latency budget loosened": ("MlpDeciderLatencyP99High", _replace("expr", "> 0.01", "> 0.05")),
    "decider drift loses its decider": ("MlpDeciderDrift", _replace("expr", "max by (decider)", "max")),
    "no-champion any instance": ("MlpDeciderNoChampion", _replace("expr", "max by (decider)", "min by (decider)")),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_a_weakened_rule_fails_the_unit_tests(tmp_path, case):
    alert, mutate = MUTATIONS[case]
    (tmp_path / "control").mkdir()
    ok = run_promtool("test", "rules", _weakened(tmp_path / "control", alert, lambda rule: None))
    assert ok.returncode == 0, "the filtered tests must pass on the unmodified rules:\n" + ok.stdout + ok.stderr
    (tmp_path / "weak").mkdir()
    result = run_promtool("test", "rules", _weakened(tmp_path / "weak", alert, mutate))
    assert result.returncode != 0, f"promtool accepted the weakened {alert}:\n{result.stdout}"
    assert f"alertname: {alert}" in result.stdout + result.stderr


def test_the_service_exposition_passes_promtool_check_metrics():
    """promtool's lint of the exposition (naming, units, counter suffixes), one child per labelled metric."""
    metrics = ServiceMetrics()
    for metric in vars(metrics).values():
        if isinstance(metric, Counter | Gauge | Histogram) and metric._labelnames:
            metric.labels(*["probe"] * len(metric._labelnames))
    exposition = generate_latest(metrics.registry).decode()
    result = subprocess.run([promtool(), "check", "metrics"], input=exposition, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- end to end: the rules on series exported by the real ServiceMetrics ----------------------------

SHADOW, CHAMPION_VERSION, CHALLENGER_VERSION = "fraud-lgbm-9", "fraud-lgbm-7", "fraud-lgbm-8"


def _traffic(m: ServiceMetrics, minute: int, incident: bool) -> None:
    """One minute of scoring traffic (10 req/s), recorded the way service.py and app.py record it;
    in the incident the feature store fails for 1 request in 5, 3% of champion requests take 4 ms,
    1 in 40 answers 503, the model pool keeps refusing a version, one feature drifts, one is skewed."""
    m.models_loaded.set(3)
    m.routing_revision.set(4)
    m.drift_report_time.set(0)  # computed at the start of the test (unit-test time starts at the epoch)
    m.prediction_drift.labels("psi").set(0.03)
    m.feature_drift.labels("amount", "psi").set(0.4 if incident else 0.02)
    m.feature_drift.labels("amount", "ks").set(0.05)
    m.feature_skew.labels("customer_txn_count_1h").set(0.05 if incident else 0.0)
    if minute == 1:
        m.model_events.labels("loaded").inc(3)
    if incident:
        m.model_events.labels("refused").inc(2)  # retried on every poll
    m.errors.labels("validation").inc()
    m.requests.labels("other", "422").inc()
    for i in range(600):
        if incident and i % 40 == 39:
            m.requests.labels("/v1/score", "503").inc()
            continue
        arm, version = ("challenger", CHALLENGER_VERSION) if i % 10 == 0 else ("champion", CHAMPION_VERSION)
        score = (i % 97) / 100
        decision = "decline" if score >= 0.9 else "review" if score >= 0.6 else "approve"
        degraded = incident and i % 5 == 0
        m.store_latency.observe(0.0003)
        fallbacks = ["merchant_fraud_rate_7d"] if i % 100 == 0 else []
        if degraded:
            m.errors.labels("feature_store_unavailable").inc()
            m.degraded.inc()
            fallbacks = ["merchant_fraud_rate_7d", "customer_txn_count_1h", "customer_amount_sum_1d"]
            decision = "review" if decision == "approve" else decision
        for name in fallbacks:
            m.fallbacks.labels(name).inc()
        m.decisions.labels(decision, arm).inc()
        m.scores.labels(version).observe(score)
        m.latency.labels("score", arm).observe(0.004 if incident and arm == "champion" and i % 33 == 1 else 0.0008)
        m.shadow_scores.labels(SHADOW).inc()
        if i % 50 == 0:
            m.shadow_disagreements.labels(SHADOW).inc()
        m.requests.labels("/v1/score", "200").inc()


def _scraped_series(minutes: int, incident: bool) -> list[dict[str, str]]:
    """promtool input series from one scrape per minute of a real ServiceMetrics' exposition."""
    metrics = ServiceMetrics()
    values: dict[str, list[str]] = {}
    for t in range(minutes + 1):
        if t:
            _traffic(metrics, t, incident)
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = {**sample.labels, "job": "mlp-scoring", "instance": "scoring-0:8000"}
                key = sample.name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                values.setdefault(key, ["_"] * t).append(repr(float(sample.value)))
    values['up{instance="scoring-0:8000", job="mlp-scoring"}'] = ["1"] * (minutes + 1)
    return [{"series": key, "values": " ".join(vals)} for key, vals in values.items()]


@pytest.mark.parametrize("incident", [False, True], ids=["healthy", "incident"])
def test_the_rules_on_series_exported_by_the_real_service_metrics(tmp_path, incident):
    """Exposition of ServiceMetrics -> scraped series -> the real rules (annotations stripped, so only
    names, labels, expressions and `for:` are checked): the right alerts, and only those, fire."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alert_rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    expected = {
        "MlpDegradedDecisionsHigh": [{"severity": "page", "job": "mlp-scoring"}],
        "MlpScoringLatencyP99High": [{"severity": "page", "arm": "champion"}],
        "MlpScoringHttp5xxHigh": [{"severity": "page", "job": "mlp-scoring"}],
        "MlpScoringInternalErrors": [{"severity": "ticket", "type": "feature_store_unavailable"}],
        "MlpModelLoadRefused": [{"severity": "page", "outcome": "refused"}],
        "MlpFeatureDriftHigh": [{"severity": "ticket", "feature": "amount"}],
        "MlpFeatureSkewHigh": [{"severity": "ticket", "feature": "customer_txn_count_1h"}],
    } if incident else {}
    checks = [{"eval_time": "20m", "alertname": name,
               "exp_alerts": [{"exp_labels": labels} for labels in expected.get(name, [])]}
              for name in rule_exprs()]
    doc = {"rule_files": ["alert_rules.yml"], "evaluation_interval": "1m",
           "tests": [{"name": "incident" if incident else "healthy", "interval": "1m",
                      "input_series": _scraped_series(20, incident), "alert_rule_test": checks}]}
    path = tmp_path / "e2e_test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = run_promtool("test", "rules", path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


def test_prometheus_config_is_valid_and_loads_the_rules():
    result = run_promtool("check", "config", PROM_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROM_CONFIG.read_text())
    assert config["rule_files"] == ["alert_rules.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "mlp-scoring" in jobs
    assert 'job="mlp-scoring"' in RULES.read_text()


def test_alert_rules_use_only_exported_metrics_and_labels():
    exprs = list(rule_exprs().values())
    assert unknown_metrics(exprs, exported_metric_names() | EXTERNAL_METRICS) == {}
    labels = exported_labels() | {
        "up": set(), "mlp_dagster_run_failures_total": TEXTFILE_LABELS,
        "mlp_dagster_last_run_failure_timestamp_seconds": TEXTFILE_LABELS}
    assert bad_matchers(exprs, labels) == []
    used = set().union(*map(promql_metric_names, exprs))
    assert {"up", "mlp_dagster_run_failures_total", "mlp_feature_drift", "mlp_score_sum"} <= used


def test_the_checker_rejects_a_rule_with_a_made_up_metric(tmp_path):
    rules = yaml.safe_load(RULES.read_text())
    rules["groups"][0]["rules"][0]["expr"] = 'sum(rate(mlp_scoring_requests_total{job="mlp-scoring"}[5m])) == 0'
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    assert run_promtool("check", "rules", path).returncode == 0  # valid PromQL, so only our check catches it
    bad = unknown_metrics(list(rule_exprs(path).values()), exported_metric_names() | EXTERNAL_METRICS)
    assert list(bad.values()) == [{"mlp_scoring_requests_total"}]


def test_the_matcher_check_rejects_wrong_labels_and_values():
    labels = exported_labels()
    assert bad_matchers(['rate(mlp_requests_total{arm="champion"}[5m])'], labels)  # no arm label
    assert bad_matchers(['rate(mlp_decisions_total{decision="approved"}[5m])'], labels)  # value is "approve"
    assert bad_matchers(['rate(mlp_decisions_total{decision="approve", job="x"}[5m])'], labels) == []


# --- Grafana --------------------------------------------------------------------------------------------

def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["uid"] == "mlp-scoring" and dash["title"] and 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance", "arm", "model_version", "decider"} <= set(variables)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], int] = {}
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert promql_metric_names(target["expr"]), f"panel {panel['title']!r} queries no metric"
    heatmaps = [p for p in dash["panels"] if p["type"] == "heatmap"]
    assert heatmaps and all("mlp_score_bucket" in t["expr"] and t["format"] == "heatmap"
                            for p in heatmaps for t in p["targets"])


def test_dashboard_covers_the_service_signals():
    used = set().union(*map(promql_metric_names, dashboard_exprs(load_dashboard())))
    # every metric family the service exports is on the dashboard
    assert {family for family, series in exported_families().items() if not series & used} == set()


def test_dashboard_uses_only_exported_metrics_and_labels():
    exprs = dashboard_exprs(load_dashboard())
    assert unknown_metrics(exprs, exported_metric_names() | {"up"}) == {}
    assert bad_matchers(exprs, exported_labels() | {"up": set()}) == []


def test_the_checker_rejects_a_panel_with_a_made_up_metric():
    dash = copy.deepcopy(load_dashboard())
    panel = next(p for p in dash["panels"] if p["type"] == "timeseries")
    panel["targets"][0]["expr"] = 'sum(rate(mlp_request_latency_ms_bucket{job="$job"}[$__rate_interval])) by (le)'
    bad = unknown_metrics(dashboard_exprs(dash), exported_metric_names() | {"up"})
    assert list(bad.values()) == [{"mlp_request_latency_ms_bucket"}]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every panel query, with Grafana's variables substituted, parses (promtool check rules)."""
    substitutions = {"$__rate_interval": "1m", "$job": "mlp-scoring", "$instance": ".*", "$arm": ".*",
                     "$model_version": ".*", "$statistic": "psi", "$decider": ".*"}
    rules = []
    for k, expr in enumerate(dashboard_exprs(load_dashboard())):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{k}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert datasources["apiVersion"] == 1
    [ds] = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http")
    dashboards = yaml.safe_load((PROVISIONING / "dashboards" / "mlp.yaml").read_text())
    [provider] = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert provider["options"]["path"] in README.read_text(), "README must say where to mount the dashboards"
