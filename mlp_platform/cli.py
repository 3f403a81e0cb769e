"""The `mlp` command line: what people do outside the Dagster UI (prepare, demo, spec, UI, warehouse).

Runs go through Dagster itself (``dagster asset materialize`` on the code location), so everything
the CLI does is recorded in the same instance and visible in the UI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from mlp_platform.deciders.declaration import DeciderError, load_decider, load_deciders
from mlp_platform.features.dbt_codegen import (
    decider_models_out_of_date,
    spec_macro_in_sync,
    write_decider_models,
    write_spec_macro,
)
from mlp_platform.features.spec import default_spec
from mlp_platform.settings import Settings, SettingsError
from mlp_platform.settings import load_settings as _load_settings

app = typer.Typer(help="ML platform for real-time risk decisioning.", no_args_is_help=True)
spec_app = typer.Typer(help="The feature specification.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
model_app = typer.Typer(help="Registered models: roles, rollback, model cards, audit trail.", no_args_is_help=True)
app.add_typer(model_app, name="model")
# `mlp models ...` is the same group (the name data scientists reach for: `mlp models submit`)
app.add_typer(model_app, name="models", hidden=True)
deciders_app = typer.Typer(help="The deciders: one declaration file each (deciders/*.yaml).", no_args_is_help=True)
app.add_typer(deciders_app, name="deciders")
console = Console()

PARTITIONED_GROUPS = "group:ingest or group:staging or group:features"
UNPARTITIONED_GROUPS = "group:review or group:training"
MODEL_GROUPS = "group:model"
NIGHTLY_MONITORING = 'group:serving or group:scoring or (group:monitoring and not key:"monitoring/staging_replay")'


def load_settings() -> Settings:
    """The settings, or a one-line error naming the bad variable (no traceback)."""
    try:
        return _load_settings()
    except SettingsError as err:
        console.print(f"[red]configuration error:[/red] {err}")
        raise typer.Exit(2) from err


def _bin(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def platform_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """Environment for child processes (Dagster, dbt): the settings made explicit."""
    env = dict(os.environ)
    env.update({
        "DAGSTER_HOME": str(settings.dagster_home),
        "MLP_DATA_DIR": str(settings.data_dir),
        "MLP_WAREHOUSE_PATH": str(settings.duckdb_path),
        "MLP_DBT_TARGET": settings.dbt_target,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
    })
    env.update(overrides)
    return env


GATE_REFUSAL = "blocking asset check failed"


def _run(cmd: list[str], env: dict[str, str], cwd: Path, what: str, allow_gate_refusal: bool = False) -> bool:
    """Run a step; False when a blocking gate refused it (an outcome, not an error) and that is allowed."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode == 0:
        return True
    output = proc.stdout + proc.stderr
    if allow_gate_refusal and GATE_REFUSAL in output:
        return False
    console.print(f"[red]{what} failed[/red] ({' '.join(cmd[:4])} ...):")
    console.print(output[-6000:], markup=False, highlight=False)
    raise typer.Exit(1)


def prepare_project(settings: Settings) -> None:
    """Compile the feature specs for dbt (the fraud macro, each application decider's model), parse
    the dbt project, create DAGSTER_HOME. Idempotent."""
    compile_specs(settings)
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    instance_yaml = settings.dagster_home / "dagster.yaml"
    if settings.env == "production":
        # the platform engineer's instance (deploy/production/dagster.yaml, or the one-machine
        # profile's from mlp_platform.local_stack): never replaced by the embedded default's
        if not instance_yaml.exists():
            console.print(f"[red]MLP_ENV=production but {instance_yaml} does not exist: put the production "
                          "instance file (deploy/production/dagster.yaml) in DAGSTER_HOME[/red]")
            raise typer.Exit(2)
    else:
        template = settings.project_root / "deploy" / "local" / "dagster.yaml"
        if not instance_yaml.exists() or instance_yaml.read_text() != template.read_text():
            shutil.copyfile(template, instance_yaml)
    _run([_bin("dbt"), "parse", "--profiles-dir", ".", "--quiet", "--target-path", settings.dbt_target_path],
         platform_env(settings),
         settings.dbt_project_dir, "dbt parse")


@app.command()
def prepare() -> None:
    """Compile the feature spec for dbt, parse the dbt project and set up DAGSTER_HOME."""
    settings = load_settings()
    prepare_project(settings)
    console.print(f"prepared: dbt manifest, DAGSTER_HOME={settings.dagster_home}")


@app.command()
def demo(
    source: str = typer.Option(None, help="synthetic (default) or handbook; overrides MLP_SOURCE."),
    days: int = typer.Option(None, help="Only the first N days of the source."),
    decider: str = typer.Option(None, help="Only this decider's steps: fraud, or credit (train on the German "
                                           "data, then a data scientist's model submitted and judged)."),
) -> None:
    """Materialise the asset graph on the embedded default and print where to look."""
    if decider not in (None, "fraud", "credit"):
        console.print(f"[red]--decider {decider}: fraud or credit[/red]")
        raise typer.Exit(1)
    if source:
        os.environ["MLP_SOURCE"] = source
    settings = load_settings()
    first, end = settings.source_days()
    if days:
        end = min(end, first + dt.timedelta(days=days))
    last = end - dt.timedelta(days=1)
    env = platform_env(settings, MLP_SOURCE=settings.source)
    dagster = [_bin("dagster"), "asset", "materialize", "-m", "assets.definitions"]
    nightly = [*dagster, "--select", NIGHTLY_MONITORING, "--partition", f"{last}"]
    steps: list = [("prepare: spec -> dbt, dbt parse, DAGSTER_HOME", None)]
    if decider in (None, "fraud"):
        steps += [
            (f"ingest + features, {settings.source} {first}..{last}",
             [*dagster, "--select", PARTITIONED_GROUPS, "--partition-range", f"{first}...{last}"]),
            ("training set (labels as of maturity)", [*dagster, "--select", UNPARTITIONED_GROUPS]),
            ("model: train, register, backtest, gates, promotion, card", [*dagster, "--select", MODEL_GROUPS]),
            (f"nightly for {last}: batch features online, batch scoring, decision log, drift report", nightly),
            (f"review queue: {last} replayed through the scoring service (review decisions open cases)", "review"),
        ]
    if decider == "credit" and not settings.german_credit_path.exists():
        console.print(f"[red]the German credit data is not at {settings.german_credit_path} "
                      "(MLP_GERMAN_CREDIT_PATH)[/red]")
        raise typer.Exit(1)
    if settings.german_credit_path.exists() and decider in (None, "credit"):  # the real German credit data
        steps.append(("credit decider: German data, backtest vs scorecard, gates, promotion",
                      [*dagster, "--select", "group:credit"]))
    if decider == "credit":
        steps.append(("credit: a data scientist's model (export, train elsewhere, mlp models submit)", "submit"))
        steps.append(("credit: the submission run (holdout vs scorecard, gates, decision impact, card)",
                      [*dagster, "--select", "group:credit", "--config-json"]))
    started = time.perf_counter()
    refused = False
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("demo", total=len(steps))
        submitted, review_queue = None, None
        for description, cmd in steps:
            progress.update(task, description=description)
            if cmd is None:
                prepare_project(settings)
            elif cmd == "submit":
                submitted = _demo_submission(settings)
            elif cmd[-1] == "--config-json":
                from mlp_platform.registry.submission import submission_run_config

                config = submission_run_config("credit", submitted, "german")
                refused |= not _run([*cmd, json.dumps(config)], env, settings.project_root, description,
                                    allow_gate_refusal=True)
            elif cmd == "review":
                if _has_champion(settings):
                    from mlp_platform.review.demo import open_demo_cases

                    review_queue = open_demo_cases(settings, last)
            elif cmd is nightly and not _has_champion(settings):
                console.print("no champion: nothing to batch-score or monitor yet")
            else:
                refused |= not _run(cmd, env, settings.project_root, description, allow_gate_refusal=True)
            progress.advance(task)
    console.print(f"[green]demo done[/green] in {time.perf_counter() - started:.0f}s")
    if decider in (None, "fraud"):
        warehouse_summary(settings)
        model_summary(settings, refused)
        if review_queue is not None:
            fraud = (review_queue["queue"] or {}).get("fraud") or {}
            console.print(f"review queue: {review_queue['decisions']} of {last} replayed; "
                          f"{fraud.get('open', 0)} open case(s) for the fraud analysts")
    if decider == "credit":
        credit_summary(settings, submitted)
    console.print(
        f"\nWhere to look:\n"
        f"  warehouse:  {_warehouse_name(settings)} (schemas raw, staging, features, training, scoring, monitoring)\n"
        f"  monitoring: {settings.monitoring_dir / 'reports'} (Evidently drift report of the last day)\n"
        f"  models:     MLflow store {settings.mlflow_tracking_uri} (mlp model roles, mlp model card N)\n"
        f"  review:     make serve, then http://127.0.0.1:8000/review (a key of MLP_REVIEWER_KEYS; README:\n"
        f"              the reviewer's page)\n"
        f"  Dagster UI: make ui  (or: DAGSTER_HOME={settings.dagster_home} dagster dev -w workspace.yaml)"
        f" then http://127.0.0.1:3000 -> Assets; runs of this demo are in Runs\n")


def _warehouse_name(settings: Settings) -> str:
    if settings.warehouse == "snowflake":
        sf = settings.snowflake
        return f"Snowflake {sf.account}/{sf.database}" + (f" at {sf.host}:{sf.port}" if sf.host else "")
    return str(settings.duckdb_path)


def _demo_submission(settings: Settings) -> str:
    """What a data scientist does outside the platform, then hands over: train a monotone LightGBM
    on `mlp deciders export credit` in plain LightGBM (a notebook), save it, submit it. Returns the
    pending version."""
    import lightgbm as lgb

    from mlp_platform.application_lifecycle import load_application_data, training_export
    from mlp_platform.registry.submission import submit_model

    credit = load_decider(settings.deciders_dir, "credit")
    frame = training_export(credit, load_application_data(settings, credit, "german"))
    names = credit.spec.feature_names
    params = {"objective": "binary", "verbosity": -1, "num_leaves": 8, "learning_rate": 0.05, "seed": 1,
              "monotone_constraints": [credit.model.monotone_constraints.get(n, 0) for n in names]}
    booster = lgb.train(params, lgb.Dataset(frame.select(names).to_numpy(), frame["label"].to_numpy(),
                                            feature_name=names), 120)
    path = settings.data_dir / "demo" / "credit_notebook_model.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    result = submit_model(settings, credit, path, submitted_by="demo-data-scientist", evaluation_source="german")
    if not result.accepted:
        raise RuntimeError("; ".join(result.report.lines()))
    return result.ref.version


def credit_summary(settings: Settings, submitted: str | None) -> None:
    from mlp_platform.registry.roles import audit_for, registry_for

    credit = load_decider(settings.deciders_dir, "credit")
    registry = registry_for(settings, credit)
    roles = {role: v for role, v in registry.roles().items() if v}
    console.print(f"credit model roles: {roles or 'none yet'}")
    for record in audit_for(settings, credit).records()[-3:]:
        console.print(f"  audit {record['seq']}: {record['event']} v{record.get('version')}: "
                      f"{str(record.get('reason', ''))[:160]}", markup=False, highlight=False)
    if submitted:
        status = registry.version_tags(submitted).get("submission")
        console.print(f"submitted v{submitted}: {status}; its card: mlp models card {submitted} --decider credit; "
                      f"serve it: mlp serve, then POST /v1/deciders/credit/decide", markup=False, highlight=False)


def _has_champion(settings: Settings) -> bool:
    from mlp_platform.lifecycle import registry_for

    return registry_for(settings).alias("champion") is not None


def warehouse_summary(settings: Settings) -> None:
    from mlp_platform.data.warehouse import warehouse_for

    if settings.warehouse == "duckdb" and not settings.duckdb_path.exists():
        return
    wh = warehouse_for(settings)
    table = Table("table", "rows", "days", "frauds/labels")
    queries = {
        "raw.transactions": "select count(*), count(distinct event_date), null from raw.transactions",
        "raw.labels": "select count(*), count(distinct event_date), sum(label) from raw.labels",
        "features.transaction_features":
            "select count(*), count(distinct event_date), null from features.transaction_features",
        "training.training_set": "select count(*), count(distinct event_date), sum(label) from training.training_set",
    }
    for name, sql in queries.items():
        try:
            row = wh.query(sql).row(0)
        except Exception:  # table not built yet
            continue
        table.add_row(name, *["" if v is None else str(v) for v in row])
    console.print(table)


def model_summary(settings: Settings, refused: bool) -> None:
    from mlp_platform import lifecycle

    registry = lifecycle.registry_for(settings)
    roles = {role: v for role, v in registry.roles().items() if v}
    console.print(f"model roles: {roles or 'none yet'}")
    last = (lifecycle.audit_for(settings).records() or [None])[-1]
    if last:
        colour = "yellow" if last["event"] == "promotion_refused" else "green"
        console.print(f"[{colour}]last model decision:[/{colour}] {last['event']} v{last['version']}: "
                      f"{last['reason']}", highlight=False)
    if refused:
        console.print("the candidate was refused by a promotion gate: the run shows which gate and why "
                      "(Dagster UI -> candidate_evaluation -> Checks); its model card says so too")


@app.command()
def warehouse() -> None:
    """Row counts of the warehouse tables."""
    warehouse_summary(load_settings())


@app.command()
def ui(port: int = typer.Option(3000, help="Port of the Dagster UI (loopback).")) -> None:
    """Open the Dagster UI on this project (DAGSTER_HOME inside the project)."""
    settings = load_settings()
    prepare_project(settings)
    cmd = [_bin("dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    raise typer.Exit(subprocess.call(cmd, env=platform_env(settings), cwd=settings.project_root))


@app.command()
def serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          workers: int = typer.Option(1, help="uvicorn workers; more than 1 needs the Redis feature store "
                                              "(MLP_FEATURE_STORE_URL=redis://...)")) -> None:
    """Run the scoring API on the champion from the registry (uvicorn)."""
    import uvicorn

    settings = load_settings()
    if workers > 1 and not settings.feature_store_url.startswith(("redis", "rediss", "unix")):
        console.print("[red]more than one worker needs a shared feature store: set MLP_FEATURE_STORE_URL=redis://...[/red]")
        raise typer.Exit(2)
    if not settings.routing_path.exists():
        from mlp_platform import lifecycle

        lifecycle.sync_routing(settings, updated_by="mlp serve (initial)")
    if not settings.serving.api_keys:
        if settings.env == "production":
            console.print("[red]MLP_API_KEYS must be set in production[/red]")
            raise typer.Exit(2)
        key_file = settings.data_dir / "serving" / "local_api_key"
        local_key = _local_key(key_file)
        # the uvicorn workers read their settings from the environment: hand them the local key
        os.environ["MLP_API_KEYS"] = local_key
        if not settings.serving.admin_keys:
            os.environ["MLP_ADMIN_KEYS"] = local_key
        console.print(f"local API key (from {key_file}): {local_key}")
    if not settings.serving.reviewer_keys and settings.env != "production":
        # the reviewer's page locally: one analyst of every decider, its own key (never a scoring key)
        reviewer_file = settings.data_dir / "serving" / "local_reviewer_key"
        reviewer_key = _local_key(reviewer_file)
        deciders = "+".join(d.name for d in load_deciders(settings.deciders_dir).values() if d.review.open_for)
        os.environ["MLP_REVIEWER_KEYS"] = f"analyst:{deciders}:{reviewer_key}"
        console.print(f"local reviewer key (from {reviewer_file}): {reviewer_key}; "
                      f"the reviewer's page: http://{host}:{port}/review")
    os.environ["MLP_SERVING_WORKERS"] = str(workers)  # for the workers' settings
    uvicorn.run("mlp_platform.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False)


def _local_key(path: Path) -> str:
    """A local key kept in ``path`` (made once, random, readable by its owner only)."""
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


audit_app = typer.Typer(help="The decision log (audit trail of every decision).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(directory: Path = typer.Option(None, help="Decision log directory (default: the service's).")) -> None:
    """Check the hash chain of the decision log; report the first broken link."""
    from mlp_platform.serving.decision_log import verify_log

    settings = load_settings()
    directory = directory or settings.decision_log_root
    chains = [directory, *sorted(p for p in directory.glob("worker-*") if p.is_dir())]
    broken = False
    for chain in chains:
        if chain != directory or any(chain.glob("decisions-*.jsonl")) or len(chains) == 1:
            report = verify_log(chain)
            console.print(f"{chain}: {report.describe()}", markup=False, highlight=False)
            broken |= not report.ok
    if broken:
        raise typer.Exit(1)


stream_app = typer.Typer(help="The decision stream (NATS JetStream): the shipper beside the service.",
                         no_args_is_help=True)
app.add_typer(stream_app, name="stream")


@stream_app.command("ship")
def stream_ship(
    log_root: Path = typer.Option(None, help="Decision log root (default: the service's, MLP_DECISION_LOG_DIR)."),
    metrics_port: int = typer.Option(None, help="Serve the shipper's Prometheus series on this port."),
) -> None:
    """Ship the sealed decision records to the stream (MLP_DECISION_STREAM_URL) until SIGTERM."""
    from mlp_platform.streaming.decision_stream import run_shipper, stream_config

    settings = load_settings()
    config = stream_config(settings)
    if config is None:
        console.print("MLP_DECISION_STREAM_URL is not set: there is no stream to ship to", style="red")
        raise typer.Exit(2)
    status = run_shipper(config, log_root or settings.decision_log_root, metrics_port=metrics_port)
    console.print(f"shipped {status.shipped} records ({status.duplicates} duplicates dropped by the stream, "
                  f"{status.failures} publications retried)", markup=False)
    if status.broken:
        console.print(f"not shipped (broken chain): {status.broken}", style="red", markup=False)
        raise typer.Exit(1)


@stream_app.command("labels")
def stream_labels(once: bool = typer.Option(False, help="Take what is waiting, then stop."),
                  metrics_port: int = typer.Option(None, help="Serve the ingest's Prometheus series on this port.")
                  ) -> None:
    """Ingest label events (mlp.labels.*) into the warehouse and the online store, bad ones to the
    dead letters, until SIGTERM (or once)."""
    from mlp_platform.streaming.decision_stream import stream_config
    from mlp_platform.streaming.label_stream import run_label_ingest

    settings = load_settings()
    config = stream_config(settings)
    if config is None:
        console.print("MLP_DECISION_STREAM_URL is not set: there is no stream to read labels from", style="red")
        raise typer.Exit(2)
    run_label_ingest(settings, config, once=once, metrics_port=metrics_port,
                     report=lambda r: console.print(f"labels: {r.as_metadata()}", markup=False, highlight=False))


stack_app = typer.Typer(help="The production profile on one machine: real Postgres, MLflow tracking server, "
                             "Redis, Snowflake (fakesnow server) and NATS, started locally.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


def _stack_root(root: Path | None) -> Path:
    return root or load_settings().data_dir / "production-stack"


@stack_app.command("up")
def stack_up(root: Path = typer.Option(None, help="Where the services keep their data (default "
                                                  "<data_dir>/production-stack).")) -> None:
    """Start the services, print the environment that selects them (MLP_ENV=production), wait for Ctrl-C."""
    from mlp_platform.local_stack import env_lines, local_stack

    with local_stack(_stack_root(root)) as stack:
        console.print(f"production profile up under {stack.root}; in another shell:\n", markup=False)
        print(env_lines(stack.env), flush=True)
        console.print("\nCtrl-C stops every service.", markup=False)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in stack.processes.values()):
                time.sleep(1.0)


@stack_app.command("demo")
def stack_demo(root: Path = typer.Option(None, help="Where the services keep their data (default "
                                                    "<data_dir>/production-stack; emptied first)."),
               days: int = typer.Option(45, help="Days of synthetic traffic (fewer: a faster run)."),
               keep: bool = typer.Option(False, help="Keep the services up after the demo, until Ctrl-C.")) -> None:
    """The demo's whole asset graph in the production profile (a slower run than the embedded one:
    every statement goes to the fakesnow server over HTTP)."""
    from mlp_platform.local_stack import env_lines, local_stack

    where = _stack_root(root)
    shutil.rmtree(where, ignore_errors=True)
    with local_stack(where) as stack:
        env = {**os.environ, **stack.env, "MLP_SYNTH_DAYS": str(days), "MLP_SYNTH_CUSTOMERS": "150",
               "MLP_SYNTH_MERCHANTS": "60"}
        proc = subprocess.run([_bin("mlp"), "demo"], env=env, cwd=load_settings().project_root)
        statements = stack.statements()
        console.print(f"{len(statements)} statements reached the Snowflake endpoint "
                      f"({stack.statements_path})", markup=False)
        if keep and proc.returncode == 0:
            print(env_lines(stack.env), flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while all(p.poll() is None for p in stack.processes.values()):
                    time.sleep(1.0)
    raise typer.Exit(proc.returncode)


@deciders_app.command("check")
def deciders_check() -> None:
    """Validate every decider declaration whole (structure, feature spec, gates, rollout); list them."""
    from mlp_platform.deciders.validate import validate_deciders

    settings = load_settings()
    try:
        deciders = validate_deciders(settings.deciders_dir)
    except DeciderError as err:
        console.print(f"[red]invalid decider declaration:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(1) from err
    # the names are what a reader greps for: never wrapped, whatever the terminal's width
    table = Table(Column("decider", no_wrap=True), "entity", Column("registered model", no_wrap=True),
                  "actions", "features", "label delay", title=f"deciders in {settings.deciders_dir}")
    for name, decl in deciders.items():
        table.add_row(name, decl.entity.name, decl.model_name, " < ".join(decl.policy.actions),
                      str(len(decl.spec.features)), f"{decl.labels.delay_days} d")
    console.print(table)


@deciders_app.command("train")
def deciders_train(
    name: str = typer.Argument(..., help="an application decider (e.g. credit)"),
    source: str = typer.Option("german", help="german (the real German credit data) or synthetic"),
    repeats: int = typer.Option(5, min=1, help="cross-validation repeats of the backtest"),
    folds: int = typer.Option(5, min=2, help="cross-validation folds"),
) -> None:
    """Train a candidate for an application decider, backtest it against the scorecard, gate it, and
    promote it or refuse it (its own registered model and audit trail); prints why."""
    from mlp_platform.application_lifecycle import (
        application_decision_impact,
        decide_application_candidate,
        gate_application_candidate,
        load_application_data,
        train_application_candidate,
    )
    from mlp_platform.evaluation.cv_backtest import CVBacktestConfig, backtest_table

    settings = load_settings()
    try:
        decider = load_decider(settings.deciders_dir, name)
        data = load_application_data(settings, decider, source)
    except (DeciderError, ValueError) as err:
        console.print(f"[red]{err}[/red]", markup=True, highlight=False)
        raise typer.Exit(1) from err
    console.print(f"{decider.name}: {data.applications.height} applications from {source}"
                  + (f" ({data.immature} not yet matured, left out)" if data.immature else ""))
    candidate = train_application_candidate(settings, decider, data, CVBacktestConfig(n_splits=folds,
                                                                                         n_repeats=repeats))
    console.print(f"registered {candidate.ref.name} v{candidate.ref.version}; {candidate.backtest['split']}")
    console.print(backtest_table(candidate.backtest), markup=False, highlight=False, soft_wrap=True)
    gates = gate_application_candidate(settings, decider, candidate)
    application_decision_impact(settings, decider, candidate)
    for gate in gates:
        mark = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {gate.name}: ", markup=True, highlight=False, end="")
        console.print(gate.summary, markup=False, highlight=False, soft_wrap=True)
    outcome = decide_application_candidate(settings, decider, candidate, gates, run_id="cli", actor="cli")
    console.print(("promoted to " + str(outcome.role) if outcome.promoted else "refused")
                  + f": {outcome.reason.removeprefix('refused: ')}",
                  markup=False, highlight=False)
    if not outcome.promoted:
        raise typer.Exit(2)


@deciders_app.command("manifests")
def deciders_manifests(check: bool = typer.Option(False, help="Only check the checked-in files are current.")) -> None:
    """Render one Deployment + Service + HPA + PDB per decider into deploy/deciders/ (from
    deploy/deciders/decider.yaml.j2 and each declaration's deployment section)."""
    from mlp_platform.serving.manifests import stale_manifests, write_manifests

    settings = load_settings()
    target = settings.project_root / "deploy" / "deciders"
    if check:
        stale = stale_manifests(settings.deciders_dir, target)
        if stale:
            console.print(f"[red]out of date: {', '.join(stale)}: run `mlp deciders manifests`[/red]")
            raise typer.Exit(1)
        console.print("per-decider manifests in sync")
        return
    for name in write_manifests(settings.deciders_dir, target):
        console.print(f"wrote deploy/deciders/{name}", markup=False, highlight=False)


@deciders_app.command("export")
def deciders_export(
    name: str = typer.Argument(..., help="an application decider (e.g. credit)"),
    out: Path = typer.Option(..., help="Parquet file to write (the feature columns, the label, the key)."),
    source: str = typer.Option("german", help="german or synthetic"),
) -> None:
    """Write what a data scientist trains a submission on: the decider's features in the spec's order
    and the label, for every application outside the platform holdout (which judges submissions)."""
    from mlp_platform.application_lifecycle import load_application_data, training_export

    settings = load_settings()
    try:
        decider = load_decider(settings.deciders_dir, name)
        frame = training_export(decider, load_application_data(settings, decider, source))
    except (DeciderError, ValueError) as err:
        console.print(f"[red]{err}[/red]", markup=True, highlight=False)
        raise typer.Exit(1) from err
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out)
    console.print(f"{out}: {frame.height} applications, {int(frame['label'].sum())} bad; features in order: "
                  + ", ".join(decider.spec.feature_names), markup=False, highlight=False, soft_wrap=True)


@model_app.command("submit")
def models_submit(
    source: str = typer.Argument(..., help="a LightGBM model file, an MLflow model directory, or an MLflow URI "
                                           "(runs:/<run id>/model, models:/<name>/<version>)"),
    decider_name: str = typer.Option(..., "--decider", help="the decider the model is for"),
    by: str = typer.Option(os.environ.get("USER", "unknown"), help="who submits (recorded in the audit trail)"),
    evaluate_on: str = typer.Option(None, "--source", help="data to judge it on (default: the decider's)"),
    evaluate: bool = typer.Option(False, help="judge it now in this process instead of by the Dagster sensor"),
    note: str = typer.Option("", help="free text kept with the submission"),
) -> None:
    """Hand over a model trained elsewhere: its signature is checked against the decider's feature
    spec; accepted, it is registered as a pending candidate that the decider's Dagster sensor judges
    (evaluation, gates, decision impact, model card); refused, the reasons are printed and recorded.
    Exit 0: accepted (and, with --evaluate, promoted); 2: refused; 1: not a readable model."""
    from mlp_platform.registry.submission import SubmissionError, submit_model

    settings = load_settings()
    try:
        decider = load_decider(settings.deciders_dir, decider_name)
        result = submit_model(settings, decider, source, submitted_by=by, evaluation_source=evaluate_on, note=note)
    except (DeciderError, SubmissionError) as err:
        console.print(f"[red]not submitted:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(1) from err
    for line in result.report.lines():
        console.print("  " + line, markup=False, highlight=False, soft_wrap=True)
    if not result.accepted:
        console.print(f"refused: recorded in run {result.run_id} (model card) and audit record {result.audit_seq}",
                      markup=False, highlight=False)
        raise typer.Exit(2)
    ref = result.ref
    console.print(f"registered {ref.name} v{ref.version} ({result.flavour}) as a pending submission", markup=False,
                  highlight=False)
    if not evaluate:
        console.print(f"the Dagster sensor {decider.name}_submission_sensor will judge it; then "
                      f"`mlp models card {ref.version} --decider {decider.name}`", markup=False, highlight=False)
        return
    from mlp_platform.application_lifecycle import judge_submission

    verdict = judge_submission(settings, decider, ref.version, evaluate_on, run_id="cli", actor=by)
    for gate in verdict.gates:
        mark = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {gate.name}: ", markup=True, highlight=False, end="")
        console.print(gate.summary, markup=False, highlight=False, soft_wrap=True)
    outcome = verdict.outcome
    console.print(("promoted to " + str(outcome.role) if outcome.promoted else "refused")
                  + f": {outcome.reason.removeprefix('refused: ')}",
                  markup=False, highlight=False, soft_wrap=True)
    if not outcome.promoted:
        raise typer.Exit(2)


@spec_app.command("show")
def spec_show() -> None:
    """List the features the specification defines."""
    spec = default_spec()
    table = Table("feature", "view", "mode", "kind", "window", title=f"feature spec {spec.spec_hash}")
    for f in spec.features:
        table.add_row(f.name, f.view, f.mode, f.kind, f.window or "")
    console.print(table)


def compile_specs(settings: Settings) -> list[Path]:
    """Write the fraud spec's dbt macro and every application decider's generated feature model."""
    from mlp_platform.deciders.declaration import load_deciders

    macro = write_spec_macro(settings.dbt_project_dir, default_spec())
    return [macro, *write_decider_models(settings.dbt_project_dir, load_deciders(settings.deciders_dir).values())]


@spec_app.command("compile")
def spec_compile() -> None:
    """Regenerate what dbt reads of the feature specs: the fraud macro and the deciders' models."""
    settings = load_settings()
    for path in compile_specs(settings):
        console.print(f"wrote {path}")


@spec_app.command("check")
def spec_check() -> None:
    """Fail if the dbt macro or a decider's generated feature model is out of date."""
    from mlp_platform.deciders.declaration import load_deciders

    settings = load_settings()
    problems = [] if spec_macro_in_sync(settings.dbt_project_dir, default_spec()) else [
        "macros/generated/feature_spec.sql: out of date"]
    problems += decider_models_out_of_date(settings.dbt_project_dir, load_deciders(settings.deciders_dir).values())
    if problems:
        for problem in problems:
            console.print(f"[red]{problem}[/red]")
        console.print("[red]run `mlp spec compile`[/red]")
        raise typer.Exit(1)
    console.print("feature specs and their dbt files in sync")


@model_app.command("roles")
def model_roles() -> None:
    """Which version holds which role (MLflow aliases)."""
    from mlp_platform import lifecycle

    settings = load_settings()
    table = Table("role", "version")
    for role, version in lifecycle.registry_for(settings).roles().items():
        table.add_row(role, version or "-")
    console.print(table)


@model_app.command("routing")
def model_routing(
    challenger_share: float = typer.Option(None, help="Share of customers (0..1) routed to the challenger."),
    advance: bool = typer.Option(False, help="Move the challenger to the next canary stage (1%, 5%, 25%, 100%)."),
) -> None:
    """Show the serving routing state; set or advance the challenger's canary share."""
    from dataclasses import replace

    from mlp_platform import lifecycle
    from mlp_platform.serving.routing import RoutingFile, next_canary_share

    settings = load_settings()
    routing = RoutingFile(settings.routing_path)
    state = routing.read() if settings.routing_path.exists() else lifecycle.sync_routing(settings, "mlp model routing")
    if advance or challenger_share is not None:
        share = next_canary_share(state.challenger_share) if advance else challenger_share
        try:
            state = routing.write(replace(state, challenger_share=share, updated_by="mlp model routing"))
        except ValueError as err:
            console.print(f"[red]refused:[/red] {err}")
            raise typer.Exit(1) from err
    console.print(state.to_json(), markup=False, highlight=False)


@model_app.command("rollback")
def model_rollback(reason: str = typer.Option(..., help="Why: recorded in the audit trail.")) -> None:
    """Restore the previous champion (audited)."""
    from mlp_platform import lifecycle

    settings = load_settings()
    try:
        outcome = lifecycle.rollback_champion(settings, run_id="cli", reason=reason, actor="cli")
    except RuntimeError as err:
        console.print(f"[red]rollback refused:[/red] {err}")
        raise typer.Exit(1) from err
    console.print(f"champion is now v{outcome.version} (was v{outcome.previous_champion})")


@model_app.command("card")
def model_card(version: str, html: Path = typer.Option(None, help="Also write the HTML card here."),
               decider_name: str = typer.Option("fraud", "--decider", help="whose registered model")) -> None:
    """Print the model card of a version (the fraud decider's is regenerated from recorded evidence;
    an application decider's is the one stored with its verdict)."""
    from mlp_platform import lifecycle
    from mlp_platform.evaluation.model_card import render_html
    from mlp_platform.registry.roles import registry_for

    settings = load_settings()
    decider = load_decider(settings.deciders_dir, decider_name)
    if decider.request.schema_name == "application":
        from mlflow.exceptions import MlflowException

        registry = registry_for(settings, decider)
        try:
            run_id = registry.ref(version).run_id
        except MlflowException as err:
            console.print(f"[red]{decider.model_name} has no version {version}[/red]")
            raise typer.Exit(1) from err
        markdown = registry.load_text(run_id, "model_card.md") or "no model card yet"
        console.print(markdown, markup=False, highlight=False)
        if html:
            html.write_text(render_html(markdown, f"{decider.model_name} v{version}"))
        return
    markdown = lifecycle.write_model_card(settings, version)
    console.print(markdown, markup=False, highlight=False)
    if html:
        html.write_text(render_html(markdown, f"{load_decider(settings.deciders_dir).model_name} v{version}"))


@model_app.command("submissions")
def models_submissions(decider_name: str = typer.Option(..., "--decider", help="an application decider")) -> None:
    """The models submitted to a decider: each version's status (pending, promoted, refused) and each
    submission refused at its signature check (with the run holding its model card)."""
    from mlp_platform.registry.roles import registry_for

    settings = load_settings()
    decider = load_decider(settings.deciders_dir, decider_name)
    registry = registry_for(settings, decider)
    table = Table("version / run", "status", "flavour", "submitted by", "from")
    for mv in sorted(registry.versions(), key=lambda m: int(m.version)):
        tags = dict(mv.tags)
        if "submission" in tags:
            run_tags = registry.client.get_run(mv.run_id).data.tags
            table.add_row(f"v{mv.version}", tags["submission"], tags.get("flavour", ""), tags.get("submitted_by", ""),
                          run_tags.get("origin", ""))
    exp = registry.client.get_experiment_by_name(registry.experiment_name)
    if exp is not None:
        for run in registry.client.search_runs([exp.experiment_id], "tags.submission = 'rejected'"):
            t = run.data.tags
            table.add_row(f"run {run.info.run_id[:12]}", "rejected (signature)", t.get("flavour", ""),
                          t.get("submitted_by", ""), t.get("origin", ""))
    console.print(table)


@model_app.command("audit")
def model_audit() -> None:
    """The model audit trail and whether its hash chain is intact."""
    from mlp_platform import lifecycle
    from mlp_platform.registry.audit import verify_chain

    records = lifecycle.audit_for(load_settings()).records()
    for r in records:
        console.print(f"{r['seq']:>4} {r['time']} {r['event']:<18} v{r.get('version')} {r.get('reason', '')}",
                      markup=False, highlight=False)
    check = verify_chain(records)
    if not check.ok:
        console.print(f"[red]chain broken at record {check.first_broken}: {check.reason}[/red]")
        raise typer.Exit(1)
    console.print(f"chain intact ({check.records} records)")


if __name__ == "__main__":
    app()
