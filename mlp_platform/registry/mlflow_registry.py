"""The model registry on MLflow: tracking of training runs, model versions, and roles as aliases.

Embedded default: SQLite tracking store and local artifacts under the data directory. Production:
``MLFLOW_TRACKING_URI`` (a tracking server). Roles are MLflow aliases (``champion``,
``challenger``, ``shadow``, ``previous_champion``), never stages and never "latest": every consumer
names the version it works on.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlp_platform.deciders.declaration import DeciderDeclaration, load_decider

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

ROLES = ("champion", "challenger", "shadow", "previous_champion")
#: The fraud decider's experiment (its name predates deciders); every other registered model has
#: ``<model name>-training``.
EXPERIMENT = "fraud-training"
_FRAUD_MODEL = "fraud-detector"

#: The run artefact holding a version's reference profile (its training population; drift and reasons).
REFERENCE_PROFILE = "reference_profile.json"



@dataclass(frozen=True)
class ModelVersionRef:
    """A registered model version, passed explicitly between assets."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id}


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class ModelRegistry:
    def __init__(self, tracking_uri: str, artifact_root: Path | None, model_name: str):
        import mlflow

        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.model_name = model_name
        self._mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_settings(cls, settings, decider: DeciderDeclaration | None = None) -> ModelRegistry:
        """The registry of the configured tracking server, on the registered model of ``decider``
        (default: the settings' default decider)."""
        decider = decider or load_decider(settings.deciders_dir)
        return cls(settings.mlflow_tracking_uri, settings.mlflow_artifact_root, decider.model_name)

    # --- experiments and runs -------------------------------------------------------------------
    @property
    def experiment_name(self) -> str:
        return EXPERIMENT if self.model_name == _FRAUD_MODEL else f"{self.model_name}-training"

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        location = self.artifact_root.as_uri() if self.artifact_root else None
        if self.artifact_root:
            self.artifact_root.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(self.experiment_name, artifact_location=location)

    def log_training(self, trained, *, spec_hash: str, code_version: str, operating_threshold: float,
                     plots: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> ModelVersionRef:
        """Log a trained model (params, metrics, lineage, plots, the model with its signature) and
        register it as a new version."""
        mlflow = self._mlflow
        exp_id = self.experiment_id()
        with self.global_uris(), mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_params({k: v for k, v in trained.params.items() if k not in ("metric", "verbosity")})
            mlflow.log_params({"split." + k: v for k, v in trained.split.as_dict().items()})
            mlflow.log_metrics({k: float(v) for k, v in trained.metrics.items() if v == v})
            mlflow.log_metric("operating_threshold", operating_threshold)
            lineage = {
                "feature_spec_hash": spec_hash,
                "code_version": code_version,
                "data.rows": str(trained.data_fingerprint["rows"]),
                "data.first_day": trained.data_fingerprint["first_day"],
                "data.last_day": trained.data_fingerprint["last_day"],
                "data.content_sha256": trained.data_fingerprint["content_sha256"],
                "feature_count": str(len(trained.feature_names)),
                **(tags or {}),
            }
            mlflow.set_tags(lineage)
            mlflow.log_dict({"features": trained.feature_names}, "features.json")
            mlflow.log_dict({"search": trained.search, "config": trained.config,
                             "data_fingerprint": trained.data_fingerprint}, "training.json")
            for name, figure in (plots or {}).items():
                mlflow.log_figure(figure, f"plots/{name}.png")
            version = self._register_booster(trained.booster, trained.feature_names, run.info.run_id, {
                "feature_spec_hash": spec_hash, "code_version": code_version,
                "operating_threshold": repr(operating_threshold)})
        return version

    def log_booster(self, booster, feature_names: list[str], *, params: dict[str, Any], metrics: dict[str, float],
                    tags: dict[str, str], version_tags: dict[str, str],
                    artifacts: dict[str, dict[str, Any] | str] | None = None) -> ModelVersionRef:
        """Log a booster trained elsewhere (a decider without dated training windows, a submitted
        model) with its params, metrics, tags and JSON/text artefacts, and register it as a new
        version of this registry's model; ``version_tags`` must carry ``feature_spec_hash``,
        ``code_version`` and ``operating_threshold``."""
        missing = sorted({"feature_spec_hash", "code_version", "operating_threshold"} - set(version_tags))
        if missing:
            raise ValueError(f"version tags lack {missing}")
        mlflow = self._mlflow
        with self.global_uris(), mlflow.start_run(experiment_id=self.experiment_id()) as run:
            mlflow.log_params({k: v for k, v in params.items() if k not in ("metric", "verbosity")})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
            mlflow.set_tags({**tags, "feature_count": str(len(feature_names))})
            mlflow.log_dict({"features": list(feature_names)}, "features.json")
            self._log_payloads(artifacts)
            return self._register_booster(booster, feature_names, run.info.run_id, version_tags)

    def log_model_dir(self, model_dir: Path, feature_names: list[str], *, tags: dict[str, str],
                      version_tags: dict[str, str], artifacts: dict[str, dict[str, Any] | str] | None = None
                      ) -> ModelVersionRef:
        """Log an MLflow model directory built elsewhere (a submitted scikit-learn model) as the
        ``model`` artefact of a new run of this registry's experiment, and register it."""
        mlflow = self._mlflow
        with self.global_uris(), mlflow.start_run(experiment_id=self.experiment_id()) as run:
            mlflow.set_tags({**tags, "feature_count": str(len(feature_names))})
            mlflow.log_dict({"features": list(feature_names)}, "features.json")
            self._log_payloads(artifacts)
            mlflow.log_artifacts(str(model_dir), "model")
            run_id = run.info.run_id
            version = mlflow.register_model(f"runs:/{run_id}/model", self.model_name, tags={
                **version_tags, "run_id": run_id, "features": json.dumps(list(feature_names))})
        return ModelVersionRef(self.model_name, str(version.version), run_id)

    def log_record_run(self, tags: dict[str, str], artifacts: dict[str, dict[str, Any] | str]) -> str:
        """A run of this registry's experiment holding only tags and JSON/text artefacts (a refused
        submission's record); returns its id."""
        mlflow = self._mlflow
        with self.global_uris(), mlflow.start_run(experiment_id=self.experiment_id()) as run:
            mlflow.set_tags(tags)
            self._log_payloads(artifacts)
            return run.info.run_id

    def _log_payloads(self, artifacts: dict[str, dict[str, Any] | str] | None) -> None:
        """Inside an active run: each artefact path -> its text (a str) or JSON (a dict)."""
        for path, payload in (artifacts or {}).items():
            (self._mlflow.log_text if isinstance(payload, str) else self._mlflow.log_dict)(payload, path)

    def _register_booster(self, booster, feature_names: list[str], run_id: str,
                          version_tags: dict[str, str]) -> ModelVersionRef:
        """Inside an active run: log the booster as an MLflow LightGBM model with its signature and
        register it (the version's tags name the run and the features)."""
        import lightgbm as lgb
        import mlflow.lightgbm
        import numpy as np
        from mlflow.models import infer_signature

        mlflow = self._mlflow
        example = np.zeros((1, len(feature_names)))
        signature = infer_signature(_frame(example, feature_names), np.zeros(1))
        info = mlflow.lightgbm.log_model(
            booster, name="model", signature=signature,
            pip_requirements=[f"lightgbm=={lgb.__version__}", f"numpy=={np.__version__}"],
        )
        version = mlflow.register_model(info.model_uri, self.model_name, tags={
            **version_tags, "run_id": run_id, "features": json.dumps(list(feature_names))})
        return ModelVersionRef(self.model_name, str(version.version), run_id)

    @contextlib.contextmanager
    def global_uris(self):
        """MLflow's fluent API (start_run, log_model) uses process-global URIs and writes them into
        os.environ; point them at this registry for the block only, then restore everything."""
        mlflow = self._mlflow
        saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    # --- aliases ---------------------------------------------------------------------------------
    def alias(self, role: str) -> str | None:
        """The version holding a role, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, role).version)
        except MlflowException:
            return None

    def set_alias(self, role: str, version: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        self.client.set_registered_model_alias(self.model_name, role, version)

    def clear_alias(self, role: str) -> None:
        if self.alias(role) is not None:
            self.client.delete_registered_model_alias(self.model_name, role)

    def roles(self) -> dict[str, str | None]:
        return {role: self.alias(role) for role in ROLES}

    def versions(self) -> list:
        """Every version of this registry's model (MLflow ``ModelVersion`` objects, tags included)."""
        return list(self.client.search_model_versions(f"name='{self.model_name}'"))

    def ref(self, version: str) -> ModelVersionRef:
        mv = self.client.get_model_version(self.model_name, version)
        return ModelVersionRef(self.model_name, str(mv.version), mv.run_id)

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    def set_version_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model_name, version, key, value)

    # --- artefacts -------------------------------------------------------------------------------
    def model_dir(self, version: str) -> Path:
        """Local directory of the version's MLflow model (downloaded when remote)."""
        from mlflow.artifacts import download_artifacts

        # resolve through this registry's own client (a models:/ URI would use the process-global one)
        location = self.client.get_model_version_download_uri(self.model_name, version)
        return Path(download_artifacts(artifact_uri=location, tracking_uri=self.tracking_uri))

    def log_json(self, run_id: str, payload: dict[str, Any], path: str) -> None:
        self.client.log_dict(run_id, payload, path)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_file(self, run_id: str, local: Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local), artifact_dir)

    def load_json(self, run_id: str, path: str) -> dict[str, Any] | None:
        text = self.load_text(run_id, path)
        return json.loads(text) if text is not None else None

    def load_text(self, run_id: str, path: str) -> str | None:
        """A text artefact of a run, or None when the run has no such artefact."""
        from mlflow.artifacts import download_artifacts

        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                           tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                return Path(local).read_text()
        except Exception:  # absent artefact
            return None


def _frame(x, names):
    import pandas as pd

    return pd.DataFrame(x, columns=names)
