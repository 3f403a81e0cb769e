"""The one settings module: decides the environment (local embedded default vs production services).

Every value comes from an environment variable with a local default, so a laptop needs no
configuration and production sets ``MLP_ENV=production`` plus the service addresses. Secrets
(warehouse passwords, tokens) are never defaults here: they are read from the environment by the
component that needs them (``dagster.EnvVar`` in Dagster resources).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PROJECT_ROOT = Path(__file__).resolve().parent.parent

Environment = Literal["local", "production"]
SourceName = Literal["synthetic", "handbook"]
WarehouseKind = Literal["duckdb", "snowflake"]

SOURCES: tuple[str, ...] = ("synthetic", "handbook")
HANDBOOK_FIRST_DAY = dt.date(2018, 4, 1)
HANDBOOK_DAYS = 183


class SettingsError(ValueError):
    """A setting has a value the platform cannot use; the message names the variable."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def switched_on(name: str) -> bool:
    """An on/off switch that is on unless set to 0, false, off or no (any case)."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "off", "no")


def c_compiler_candidates() -> tuple[str, ...]:
    """C compilers to try, in order, for compiled trees (``$CC`` first)."""
    cc = os.environ.get("CC")
    return ((cc,) if cc else ()) + ("cc", "gcc", "clang")


def compiled_code_cache_dir() -> Path:
    """Where compiled model code is cached: ``$MLP_FAST_SCORER_CACHE``, else the user's cache
    directory (``$XDG_CACHE_HOME`` or ``~/.cache``) / mlp_platform / fast_scorer."""
    explicit = os.environ.get("MLP_FAST_SCORER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlp_platform" / "fast_scorer"


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc


def _env_date(name: str, default: dt.date | None) -> dt.date | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an ISO date (YYYY-MM-DD)") from exc


def _env_json_object(name: str) -> dict:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    import json

    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SettingsError(f"{name} must be a JSON object of field: value")
    return value


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = _env(name, default).lower()
    if value not in allowed:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class SyntheticSettings:
    seed: int = 7
    start_date: dt.date = dt.date(2026, 1, 1)
    days: int = 60
    n_customers: int = 500
    n_merchants: int = 200
    drift_start: dt.date | None = None


def _env_optional_float(name: str, default: float | None) -> float | None:
    """A number, or None when set to none/off (the bound or feature switched off)."""
    raw = os.environ.get(name, "").strip()
    if raw.lower() in ("none", "off"):
        return None
    return default if not raw else _env_float(name, 0.0)


def _keys(name: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in os.environ.get(name, "").split(",") if k.strip())


def _decider_keys(name: str) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in _keys(name):
        decider, sep, key = pair.partition(":")
        if not sep or not decider.strip() or not key.strip():
            raise SettingsError(f"{name}: expected comma-separated decider:key pairs, got an entry without "
                                "a decider or a key")
        out.append((decider.strip(), key.strip()))
    return tuple(out)


@dataclass(frozen=True)
class ServingSettings:
    """Every knob of the scoring service, in one place (each from the environment variable named in
    its comment; ``mlp serve`` and the uvicorn factory read nothing else). The decision policy
    (bands, thresholds, the degraded decision, reasons) belongs to the decider: its declaration.
    """

    #: MLP_API_KEYS / MLP_ADMIN_KEYS: comma-separated scoring and admin keys (secrets; admin keys may score).
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    #: MLP_ID_HASH_KEY: the key of the pseudonyms in the decision log (secret); empty: a key file under data_dir.
    id_hash_key: str = ""
    #: MLP_RELOAD_INTERVAL_S: how often the routing state, batch snapshots and drift summary are polled.
    reload_interval_s: float = 5.0
    #: MLP_SERVING_WORKERS: uvicorn worker processes (more than one needs the Redis store).
    workers: int = 1
    #: MLP_SERVING_FAST_PATH: the raw ASGI layer for POST /v1/score (0: FastAPI serves it too).
    fast_path: bool = True
    #: MLP_DECISION_LOG_GROUP_COMMIT_MS / _INLINE_COMMIT / _ZERO_AHEAD_BYTES: see ServingConfig.
    log_group_commit_ms: float = 2.0
    log_inline_commit: bool = True
    log_zero_ahead_bytes: int = 1024 * 1024
    #: MLP_DRIFT_REPORT_PATH: the drift summary exported as gauges ("none": off; empty: the default file).
    drift_report_path: str = ""
    #: MLP_EVENT_TIME_MAX_FUTURE_S: an event_time further ahead of the server clock is a 422.
    event_time_max_future_s: float = 300.0
    #: MLP_EVENT_TIME_MAX_AGE_S: an event_time older than this (server clock) is a 422; None ("none"):
    #: no such bound (a replay of history); default: the spec's longest lookback plus the label delay.
    event_time_max_age_s: float | None = None
    event_time_max_age_default: bool = True
    #: MLP_EVENT_TIME_LATE_GRACE_S: an event older than the newest accepted one by more is a 422
    #: (its lookback may be pruned); history is kept this long beyond each view's lookback.
    late_grace_s: float = 3600.0
    #: MLP_IDEMPOTENCY_WINDOW_S: how long a decision is replayed to a retry of the same transaction.
    idempotency_window_s: float = 900.0
    #: MLP_SCORER_BACKEND: how a loaded version evaluates its trees: auto (compiled C code, LightGBM's
    #: own single-row path where no compiler is found), compiled (required) or lightgbm (the peer).
    scorer_backend: str = "auto"
    #: MLP_TRACING (off, console, otlp) and OTEL_SERVICE_NAME: request tracing.
    tracing: str = ""
    otel_service_name: str = "mlp-scoring"
    #: MLP_SERVE_DECIDERS: the deciders this process hosts: "all" (every declared decider: fraud
    #: on /v1/score, the application deciders under /v1/deciders/{name}/...), empty (the fraud
    #: decider alone), or comma-separated names, exactly those ("credit": a credit-only process,
    #: one Deployment per decider; "fraud,credit": both).
    deciders: str = "all"
    #: MLP_DECIDER_API_KEYS: comma-separated ``decider:key`` pairs (secrets): a key calls only its
    #: decider (admin keys call every decider; MLP_API_KEYS stay the fraud decider's keys).
    decider_api_keys: tuple[tuple[str, str], ...] = ()
    #: MLP_REVIEWER_KEYS: comma-separated ``reviewer:decider+decider:key`` (secrets): a reviewer key
    #: reads, claims and resolves the cases of its deciders, and nothing else; the reviewer's name
    #: (recorded with every action) comes from the key, never from the request.
    reviewer_keys: tuple[tuple[str, tuple[str, ...], str], ...] = field(default=(), repr=False)
    #: MLP_COMPLIANCE_KEYS: comma-separated ``name:key``: read-only (cases and decision lookups).
    compliance_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)


_REVIEWER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


def _reviewer_keys(name: str) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    out = []
    for entry in _keys(name):
        parts = entry.split(":", 2)
        if len(parts) != 3 or not _REVIEWER.match(parts[0].strip()) or not parts[2].strip():
            raise SettingsError(f"{name}: expected comma-separated reviewer:decider+decider:key entries "
                                "(a reviewer name of letters, digits, '.', '_', '@', '-')")
        deciders = tuple(d.strip() for d in parts[1].split("+") if d.strip())
        if not deciders:
            raise SettingsError(f"{name}: the reviewer {parts[0].strip()!r} names no decider")
        out.append((parts[0].strip(), deciders, parts[2].strip()))
    return tuple(out)


def _compliance_keys(name: str) -> tuple[tuple[str, str], ...]:
    out = []
    for entry in _keys(name):
        who, sep, key = entry.partition(":")
        if not sep or not _REVIEWER.match(who.strip()) or not key.strip():
            raise SettingsError(f"{name}: expected comma-separated name:key entries")
        out.append((who.strip(), key.strip()))
    return tuple(out)


def load_serving_settings() -> ServingSettings:
    """The scoring service's knobs from the environment (see :class:`ServingSettings`)."""
    age_raw = os.environ.get("MLP_EVENT_TIME_MAX_AGE_S", "").strip()
    out = ServingSettings(
        api_keys=_keys("MLP_API_KEYS"), admin_keys=_keys("MLP_ADMIN_KEYS"),
        id_hash_key=os.environ.get("MLP_ID_HASH_KEY", ""),
        reload_interval_s=_env_float("MLP_RELOAD_INTERVAL_S", 5.0),
        workers=_env_int("MLP_SERVING_WORKERS", 1),
        fast_path=switched_on("MLP_SERVING_FAST_PATH"),
        log_group_commit_ms=_env_float("MLP_DECISION_LOG_GROUP_COMMIT_MS", 2.0),
        log_inline_commit=switched_on("MLP_DECISION_LOG_INLINE_COMMIT"),
        log_zero_ahead_bytes=_env_int("MLP_DECISION_LOG_ZERO_AHEAD_BYTES", 1024 * 1024),
        drift_report_path=os.environ.get("MLP_DRIFT_REPORT_PATH", ""),
        event_time_max_future_s=_env_float("MLP_EVENT_TIME_MAX_FUTURE_S", 300.0),
        event_time_max_age_s=_env_optional_float("MLP_EVENT_TIME_MAX_AGE_S", None),
        event_time_max_age_default=age_raw == "",
        late_grace_s=_env_float("MLP_EVENT_TIME_LATE_GRACE_S", 3600.0),
        idempotency_window_s=_env_float("MLP_IDEMPOTENCY_WINDOW_S", 900.0),
        scorer_backend=_choice("MLP_SCORER_BACKEND", "auto", ("auto", "compiled", "lightgbm")),
        tracing=os.environ.get("MLP_TRACING", "").strip().lower(),
        otel_service_name=_env("OTEL_SERVICE_NAME", "mlp-scoring"),
        deciders=os.environ.get("MLP_SERVE_DECIDERS", "all").strip(),
        decider_api_keys=_decider_keys("MLP_DECIDER_API_KEYS"),
        reviewer_keys=_reviewer_keys("MLP_REVIEWER_KEYS"),
        compliance_keys=_compliance_keys("MLP_COMPLIANCE_KEYS"),
    )
    scoring = set(out.api_keys) | set(out.admin_keys) | {k for _, k in out.decider_api_keys}
    review = [k for *_, k in out.reviewer_keys] + [k for _, k in out.compliance_keys]
    if scoring & set(review) or len(set(review)) != len(review):
        raise SettingsError("a reviewer or compliance key must be its own: not a scoring or admin key, "
                            "and not given twice")
    if out.workers < 1 or out.event_time_max_future_s < 0 or out.late_grace_s < 0 or out.idempotency_window_s < 0:
        raise SettingsError("MLP_SERVING_WORKERS must be >= 1 and the event-time and idempotency bounds >= 0")
    return out


@dataclass(frozen=True)
class SnowflakeSettings:
    """The Snowflake warehouse's connection (MLP_WAREHOUSE=snowflake, the default of MLP_ENV=production):
    SNOWFLAKE_ACCOUNT, _USER, _DATABASE, _WAREHOUSE, _ROLE; SNOWFLAKE_HOST / _PORT / _PROTOCOL only for
    a Snowflake-compatible endpoint (the production profile's fakesnow server), empty on a real account.
    SNOWFLAKE_PASSWORD is a secret: read from the environment here, never printed."""

    account: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = "MLP"
    warehouse: str = "MLP_WH"
    role: str = ""
    host: str = ""
    port: int = 0
    protocol: str = "https"


def load_snowflake_settings() -> SnowflakeSettings:
    return SnowflakeSettings(
        account=_env("SNOWFLAKE_ACCOUNT", ""), user=_env("SNOWFLAKE_USER", ""),
        password=os.environ.get("SNOWFLAKE_PASSWORD", ""),
        database=_env("SNOWFLAKE_DATABASE", "MLP"), warehouse=_env("SNOWFLAKE_WAREHOUSE", "MLP_WH"),
        role=_env("SNOWFLAKE_ROLE", ""), host=_env("SNOWFLAKE_HOST", ""), port=_env_int("SNOWFLAKE_PORT", 0),
        protocol=_choice("SNOWFLAKE_PROTOCOL", "https", ("https", "http")))


@dataclass(frozen=True)
class TrackingServerAuth:
    """How to reach an MLflow tracking server (MLFLOW_TRACKING_URI http(s)://): the variables the
    MLflow client itself reads, read here once for the scoring service's registry reader
    (:mod:`mlp_platform.registry.tracking_server`). MLFLOW_TRACKING_TOKEN (a bearer token) or
    MLFLOW_TRACKING_USERNAME / _PASSWORD (basic); MLFLOW_TRACKING_SERVER_CERT_PATH (a CA bundle);
    MLFLOW_TRACKING_INSECURE_TLS=true skips certificate checks. The secrets are never printed."""

    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    server_cert_path: str = ""
    insecure_tls: bool = False


def load_tracking_server_auth() -> TrackingServerAuth:
    return TrackingServerAuth(
        token=os.environ.get("MLFLOW_TRACKING_TOKEN", ""), username=_env("MLFLOW_TRACKING_USERNAME", ""),
        password=os.environ.get("MLFLOW_TRACKING_PASSWORD", ""),
        server_cert_path=_env("MLFLOW_TRACKING_SERVER_CERT_PATH", ""),
        insecure_tls=_env("MLFLOW_TRACKING_INSECURE_TLS", "false").lower() in ("1", "true", "yes", "on"))


@dataclass(frozen=True)
class Settings:
    env: Environment = "local"
    project_root: Path = PROJECT_ROOT
    data_dir: Path = PROJECT_ROOT / "data"
    source: SourceName = "synthetic"
    handbook_path: Path = PROJECT_ROOT.parent / "shared" / "data" / "fraud_handbook" / "transactions.parquet"
    #: The handbook data has no label times: a fraud is assumed known this many days after the
    #: transaction (a chargeback delay). Explicit and configurable: MLP_HANDBOOK_LABEL_DELAY_DAYS.
    handbook_label_delay_days: float = 7.0
    #: The German credit data (read in place, never copied): MLP_GERMAN_CREDIT_PATH.
    german_credit_path: Path = PROJECT_ROOT.parent / "shared" / "data" / "german_credit" / "german_credit.csv"
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)
    warehouse: WarehouseKind = "duckdb"
    snowflake: SnowflakeSettings = field(default_factory=SnowflakeSettings)
    #: Share of rows that may receive a non-critical default before the contract check warns.
    contract_default_warn_share: float = 0.05
    #: MLP_DECIDERS_DIR: the decider declarations (one file each). What belongs to a decider (its
    #: model name, policy, label delay, gates, rollout) is declared there, not here.
    deciders_dir: Path = PROJECT_ROOT / "deciders"
    #: MLflow tracking/registry URI; empty means the embedded SQLite store under data_dir.
    mlflow_uri: str = ""
    #: Credentials and TLS of a tracking server (the MLflow client's own variables).
    mlflow_auth: TrackingServerAuth = field(default_factory=TrackingServerAuth)
    #: Drift sensor: consecutive days against the champion before a retrain, cool-down, severity.
    retrain_min_days: int = 2
    retrain_cooldown_hours: float = 24.0
    retrain_severity: str = "error"
    #: Dagster run config of the retrain runs the drift sensor requests (search budget, gate
    #: tolerances), e.g. {"ops": {"candidate_model": {"config": {"n_candidates": 4}}}}.
    retrain_run_config: dict = field(default_factory=dict)
    #: Staged rollout overrides (JSON object of mlp_platform.rollout RolloutConfig fields).
    rollout_config: dict = field(default_factory=dict)
    #: The scoring service's /metrics URL for the rollout guardrails (error rate, latency); empty: not read.
    #: ``{decider}`` in it names an application decider's own service (one Deployment per decider),
    #: e.g. http://mlp-decider-{decider}.mlp.svc:8000/metrics; without it every decider reads this one.
    service_metrics_url: str = ""
    #: MLP_DECISION_LOG_DIR; None: <data_dir>/serving/decisions (see decision_log_root).
    decision_log_dir: Path | None = None
    #: MLP_FEATURE_STORE_URL; empty: the embedded store under <data_dir>/serving (see feature_store_url).
    online_store_url: str = ""
    #: MLP_DECISION_STREAM_URL (nats://host:4222, or comma-separated seed servers): the NATS JetStream the shippers send decision records
    #: to and the warehouse loader reads; empty: the loader reads the local log segments (a laptop).
    decision_stream_url: str = ""
    #: MLP_DECISION_STREAM (stream name) and MLP_DECISION_STREAM_REPLICAS (1 on one server, 3 clustered).
    decision_stream_name: str = "MLP_DECISIONS"
    decision_stream_replicas: int = 1
    #: The scoring service's knobs (see ServingSettings).
    serving: ServingSettings = field(default_factory=ServingSettings)
    #: MLP_REVIEW_DATABASE_URL: the review cases' database (a SQLAlchemy URL: postgresql://... in
    #: production, where it is required); empty: SQLite under <data_dir>/review (see review_database).
    review_database_url: str = field(default="", repr=False)  # may hold a password

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_uri or f"sqlite:///{self.data_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path | None:
        return None if self.mlflow_uri else self.data_dir / "mlflow" / "artifacts"

    @property
    def batch_snapshot_dir(self) -> Path:
        return self.data_dir / "serving" / "batch"

    @property
    def decision_log_root(self) -> Path:
        """Where the service writes its decision log (one subdirectory per worker with several)."""
        return self.decision_log_dir or self.data_dir / "serving" / "decisions"

    def decider_log_root(self, decider: str) -> Path:
        """Where an application decider's service writes its own decision log, beside the fraud
        service's (``<parent>/decisions-<decider>/<leaf>`` of :attr:`decision_log_root`), as
        ``mlp_platform.serving.deciders.build_host`` lays it out."""
        root = self.decision_log_root
        return root.parent / f"decisions-{decider}" / root.name

    @property
    def feature_store_url(self) -> str:
        """The online feature store: embedded by default, redis://... in production."""
        return self.online_store_url or f"embedded://{self.data_dir / 'serving' / 'online_store'}"

    @property
    def review_database(self) -> str:
        """The review cases' database URL: MLP_REVIEW_DATABASE_URL, or SQLite under the data directory
        (the embedded default; refused in production, where every replica must share one database)."""
        if self.review_database_url:
            return self.review_database_url
        if self.env == "production":
            raise SettingsError("MLP_REVIEW_DATABASE_URL must name the review database (Postgres) in production")
        return f"sqlite:///{self.data_dir / 'review' / 'cases.db'}"

    @property
    def routing_path(self) -> Path:
        return self.data_dir / "serving" / "routing.json"

    @property
    def monitoring_dir(self) -> Path:
        """Drift reports, batch-scoring outputs and the latest drift summary the service exports."""
        return self.data_dir / "monitoring"

    @property
    def rollout_path(self) -> Path:
        """The staged-rollout state (which candidate, which stage, since when, history)."""
        return self.data_dir / "serving" / "rollout.json"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    def metrics_url(self, decider: str | None = None) -> str:
        """The /metrics URL whose series judge ``decider``'s rollout (None: the fraud decider's)."""
        return self.service_metrics_url.replace("{decider}", decider or "fraud")

    @property
    def dbt_project_dir(self) -> Path:
        return self.project_root / "dbt_project"

    @property
    def dbt_target(self) -> str:
        return "production" if self.warehouse == "snowflake" else "local"

    @property
    def dbt_target_path(self) -> str:
        """dbt's artefacts (manifest, partial parse) per target, inside the dbt project: a production
        parse never replaces the embedded default's manifest."""
        return "target" if self.dbt_target == "local" else f"target-{self.dbt_target}"

    def source_days(self) -> tuple[dt.date, dt.date]:
        """First day and the day after the last day the configured source covers."""
        if self.source == "handbook":
            return HANDBOOK_FIRST_DAY, HANDBOOK_FIRST_DAY + dt.timedelta(days=HANDBOOK_DAYS)
        start = self.synthetic.start_date
        return start, start + dt.timedelta(days=self.synthetic.days)


def load_settings() -> Settings:
    """Read the settings from the environment (cheap; call it where the value is needed)."""
    env = _choice("MLP_ENV", "local", ("local", "production"))
    root = Path(_env("MLP_PROJECT_ROOT", str(PROJECT_ROOT))).resolve()
    data_dir = Path(_env("MLP_DATA_DIR", str(root / "data"))).resolve()
    default_handbook = root.parent / "shared" / "data" / "fraud_handbook" / "transactions.parquet"
    synthetic = SyntheticSettings(
        seed=_env_int("MLP_SYNTH_SEED", 7),
        start_date=_env_date("MLP_SYNTH_START", dt.date(2026, 1, 1)) or dt.date(2026, 1, 1),
        days=_env_int("MLP_SYNTH_DAYS", 60),
        n_customers=_env_int("MLP_SYNTH_CUSTOMERS", 500),
        n_merchants=_env_int("MLP_SYNTH_MERCHANTS", 200),
        drift_start=_env_date("MLP_SYNTH_DRIFT_START", None),
    )
    if synthetic.days < 1 or synthetic.n_customers < 1 or synthetic.n_merchants < 1:
        raise SettingsError("MLP_SYNTH_DAYS, MLP_SYNTH_CUSTOMERS and MLP_SYNTH_MERCHANTS must be >= 1")
    settings = Settings(
        env=env,  # type: ignore[arg-type]
        project_root=root,
        data_dir=data_dir,
        source=_choice("MLP_SOURCE", "synthetic", SOURCES),  # type: ignore[arg-type]
        handbook_path=Path(_env("MLP_HANDBOOK_PATH", str(default_handbook))).resolve(),
        handbook_label_delay_days=_env_float("MLP_HANDBOOK_LABEL_DELAY_DAYS", 7.0),
        german_credit_path=Path(_env("MLP_GERMAN_CREDIT_PATH", str(
            root.parent / "shared" / "data" / "german_credit" / "german_credit.csv"))).resolve(),
        synthetic=synthetic,
        warehouse=_choice(  # type: ignore[arg-type]
            "MLP_WAREHOUSE", "snowflake" if env == "production" else "duckdb", ("duckdb", "snowflake")
        ),
        snowflake=load_snowflake_settings(),
        contract_default_warn_share=_env_float("MLP_CONTRACT_DEFAULT_WARN_SHARE", 0.05),
        deciders_dir=Path(_env("MLP_DECIDERS_DIR", str(root / "deciders"))).resolve(),
        mlflow_uri=_env("MLFLOW_TRACKING_URI", ""),
        mlflow_auth=load_tracking_server_auth(),
        retrain_min_days=_env_int("MLP_RETRAIN_MIN_DAYS", 2),
        retrain_cooldown_hours=_env_float("MLP_RETRAIN_COOLDOWN_HOURS", 24.0),
        retrain_severity=_choice("MLP_RETRAIN_SEVERITY", "error", ("warn", "error")),
        retrain_run_config=_env_json_object("MLP_RETRAIN_RUN_CONFIG"),
        rollout_config=_env_json_object("MLP_ROLLOUT_CONFIG"),
        service_metrics_url=_env("MLP_SERVICE_METRICS_URL", ""),
        decision_log_dir=Path(_env("MLP_DECISION_LOG_DIR", "")) if _env("MLP_DECISION_LOG_DIR", "") else None,
        online_store_url=_env("MLP_FEATURE_STORE_URL", ""),
        decision_stream_url=_env("MLP_DECISION_STREAM_URL", ""),
        decision_stream_name=_env("MLP_DECISION_STREAM", "MLP_DECISIONS"),
        decision_stream_replicas=_env_int("MLP_DECISION_STREAM_REPLICAS", 1),
        serving=load_serving_settings(),
        review_database_url=os.environ.get("MLP_REVIEW_DATABASE_URL", "").strip(),
    )
    if settings.retrain_min_days < 1 or settings.retrain_cooldown_hours < 0:
        raise SettingsError("MLP_RETRAIN_MIN_DAYS must be >= 1 and MLP_RETRAIN_COOLDOWN_HOURS >= 0")
    if settings.decision_stream_replicas not in (1, 3, 5):
        raise SettingsError("MLP_DECISION_STREAM_REPLICAS must be 1, 3 or 5 (JetStream replicas)")
    if settings.decision_stream_url and not all(
            u.strip().startswith(("nats://", "tls://")) for u in settings.decision_stream_url.split(",")):
        raise SettingsError("MLP_DECISION_STREAM_URL must be a nats:// or tls:// URL (or several, comma-separated)")
    if settings.handbook_label_delay_days < 0:
        raise SettingsError("MLP_HANDBOOK_LABEL_DELAY_DAYS must be >= 0 days")
    return settings
