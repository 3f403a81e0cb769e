"""Bring your own model: a data scientist hands over a model trained elsewhere (``mlp models submit
--decider NAME SOURCE`` or :func:`submit_model`), the platform checks its signature against the
decider's feature spec and registers it as a *pending* candidate of the decider's registered model;
the decider's submission sensor then runs the same evaluation, blocking gates, decision-impact
report and model card as for a platform-trained model
(:func:`mlp_platform.application_lifecycle.evaluate_submitted_candidate`).

Sources:

* a LightGBM model file (``booster.save_model``; its feature names are its signature);
* an MLflow model: a local model directory (with ``MLmodel``) or a URI (``runs:/<run id>/model``,
  ``models:/<name>/<version>``, ``file:...``) on the platform's tracking server, of flavour
  ``lightgbm`` or ``sklearn`` (any scikit-learn-compatible binary classifier with
  ``predict_proba``); its signature (``mlflow.models.infer_signature``) or, failing that, the
  estimator's ``feature_names_in_`` is what is checked.

Signature check (:func:`check_signature`): the inputs must be the spec's features, same names, same
order, numeric (double or float: a feature may be missing, NaN). The report names each missing,
extra, misplaced and wrongly typed input. A refused submission is not registered: it is recorded
as a run of the decider's experiment (tag ``submission=rejected``) with its report as the model
card, and in the decider's audit trail (``submission_refused``). An accepted one becomes a version
tagged ``submission=pending`` (then ``promoted`` or ``refused`` once evaluated), with who submitted
it, from where, and on which data it is to be judged; audit record ``submission``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlp_platform.deciders.declaration import DeciderDeclaration
from mlp_platform.registry.mlflow_registry import ModelVersionRef
from mlp_platform.registry.roles import audit_for, registry_for
from mlp_platform.settings import Settings

PENDING, PROMOTED, REFUSED, REJECTED = "pending", "promoted", "refused", "rejected"
NUMERIC_TYPES = frozenset({"double", "float"})
SUBMISSION_CARD = "model_card.md"
_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "file:")


class SubmissionError(ValueError):
    """The submission cannot be read at all (no such file, not a model, unsupported flavour)."""


@dataclass
class SignatureReport:
    expected: list[str]
    found: list[tuple[str, str]]
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    misplaced: list[tuple[int, str, str]] = field(default_factory=list)
    wrong_type: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.misplaced or self.wrong_type)

    def lines(self) -> list[str]:
        if self.ok:
            return [f"signature matches the feature spec: {len(self.expected)} numeric inputs in the spec's order"]
        out = [f"signature differs from the feature spec ({len(self.found)} inputs, the spec has "
               f"{len(self.expected)}):"]
        if self.missing:
            out.append(f"missing (in the spec, not in the model): {', '.join(self.missing)}")
        if self.extra:
            out.append(f"extra (in the model, not in the spec): {', '.join(self.extra)}")
        for position, want, got in self.misplaced[:10]:
            out.append(f"position {position}: the spec has {want}, the model {got}")
        if len(self.misplaced) > 10:
            out.append(f"... and {len(self.misplaced) - 10} more positions out of order")
        for name, kind in self.wrong_type.items():
            out.append(f"{name}: type {kind}, the spec's features are double (a feature may be missing: NaN)")
        out.append("train on the columns of `mlp deciders export <decider>` in their order")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "expected": self.expected, "found": [list(f) for f in self.found],
                "missing": self.missing, "extra": self.extra, "misplaced": [list(m) for m in self.misplaced],
                "wrong_type": self.wrong_type}


def check_signature(found: list[tuple[str, str]], expected: list[str]) -> SignatureReport:
    """Compare a model's inputs ``(name, type)`` with the spec's feature names (see the module docstring)."""
    names = [n for n, _ in found]
    report = SignatureReport(list(expected), list(found))
    report.missing = [n for n in expected if n not in names]
    report.extra = [n for n in names if n not in expected]
    if not report.missing and not report.extra and len(names) == len(expected):
        report.misplaced = [(i, want, got) for i, (want, got) in enumerate(zip(expected, names, strict=True))
                            if want != got]
    report.wrong_type = {n: t for n, t in found if n in expected and t not in NUMERIC_TYPES}
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        report.extra += [f"{n} (duplicated)" for n in duplicated]
    return report


@dataclass
class SubmittedModel:
    """A model as handed over: its flavour, its inputs, and a local MLflow-model directory or file."""

    flavour: str
    inputs: list[tuple[str, str]]
    origin: str
    path: Path
    booster: Any = None
    #: scikit-learn only: MLflow's serialisation format (skops, pickle, cloudpickle) and the types
    #: the submitter declared trusted for skops.
    serialization: str = ""
    trusted_types: tuple[str, ...] = ()


def _signature_inputs(mlmodel: dict) -> list[tuple[str, str]]:
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        return []
    columns = json.loads(raw)
    if any("name" not in c for c in columns):
        raise SubmissionError("the model's signature is a tensor signature; a decider needs named columns "
                              "(log it with infer_signature on a DataFrame of the spec's features)")
    return [(c["name"], str(c.get("type", "?"))) for c in columns]


def read_submission(source: str | Path, settings: Settings, workdir: Path, *,
                    allow_pickle: bool = False) -> SubmittedModel:
    """Read what was handed over into ``workdir`` (a URI is downloaded there). A scikit-learn model
    in a pickle format is refused before anything is loaded unless ``allow_pickle``."""
    import lightgbm as lgb

    text = str(source)
    if text.startswith(_URI_SCHEMES):
        from mlflow.artifacts import download_artifacts

        uri = text + "/model" if text.startswith("runs:/") and text.rstrip("/").count("/") == 1 else text
        try:
            # MLflow 3 resolves runs:/ through the logged models of the process-global tracking URI
            with registry_for(settings).global_uris():
                local = Path(download_artifacts(artifact_uri=uri, dst_path=str(workdir),
                                                tracking_uri=settings.mlflow_tracking_uri))
        except Exception as exc:  # MLflow raises many kinds for "not there"
            raise SubmissionError(f"cannot download {text}: {exc}") from exc
        origin = text
    else:
        local = Path(text).expanduser()
        if not local.exists():
            raise SubmissionError(f"{local}: no such file or directory")
        origin = str(local.resolve())
    if local.is_file():
        try:
            booster = lgb.Booster(model_file=str(local))
        except lgb.basic.LightGBMError as exc:
            raise SubmissionError(f"{local}: not a LightGBM model file ({exc}); a scikit-learn model is "
                                  "submitted as an MLflow model (mlflow.sklearn.log_model)") from exc
        kind = "category" if getattr(booster, "pandas_categorical", None) else "double"
        return SubmittedModel("lightgbm", [(n, kind) for n in booster.feature_name()], origin, local, booster)
    mlmodel_path = local / "MLmodel"
    if not mlmodel_path.exists():
        raise SubmissionError(f"{local}: a directory without an MLmodel file is not an MLflow model")
    mlmodel = yaml.safe_load(mlmodel_path.read_text()) or {}
    flavours = mlmodel.get("flavors") or {}
    inputs = _signature_inputs(mlmodel)
    if "lightgbm" in flavours:
        booster = lgb.Booster(model_file=str(local / flavours["lightgbm"]["data"]))
        return SubmittedModel("lightgbm", inputs or [(n, "double") for n in booster.feature_name()], origin, local,
                              booster)
    if "sklearn" in flavours:
        sk = flavours["sklearn"]
        serialization = str(sk.get("serialization_format", ""))
        if serialization != "skops" and not allow_pickle:
            raise SubmissionError(f"scikit-learn model serialised as {serialization or 'unknown'}: loading it would "
                                  "run arbitrary code; log it with MLflow's skops format (serialization_format="
                                  "'skops', the default) or allow pickle in the decider's submission section")
        if not inputs:
            import mlflow.sklearn

            fitted = getattr(mlflow.sklearn.load_model(str(local)), "feature_names_in_", None)
            if fitted is None:
                raise SubmissionError("the scikit-learn model has no signature and no feature_names_in_: log it "
                                      "with signature=infer_signature(X, y) on a DataFrame of the spec's features")
            inputs = [(str(n), "double") for n in fitted]
        return SubmittedModel("sklearn", inputs, origin, local, serialization=serialization,
                              trusted_types=tuple(sk.get("skops_trusted_types") or ()))
    raise SubmissionError(f"MLflow model of flavours {sorted(flavours)}: a decider accepts lightgbm or sklearn")


@dataclass
class SubmissionResult:
    decider: str
    accepted: bool
    report: SignatureReport
    flavour: str
    origin: str
    #: The registered candidate (accepted) or None.
    ref: ModelVersionRef | None
    #: The run that holds the submission's record (the candidate's run, or the rejection's run).
    run_id: str
    audit_seq: int
    card: str

    def as_dict(self) -> dict[str, Any]:
        return {"decider": self.decider, "accepted": self.accepted, "flavour": self.flavour, "origin": self.origin,
                "version": self.ref.version if self.ref else None, "run_id": self.run_id,
                "audit_seq": self.audit_seq, "signature": self.report.as_dict()}


def rejection_card(decider: DeciderDeclaration, submitted: SubmittedModel, report: SignatureReport,
                   submitted_by: str) -> str:
    lines = [f"# Model card: submission to {decider.model_name} (decider {decider.name}): REFUSED", "",
             f"- Submitted by: {submitted_by}", f"- From: {submitted.origin}", f"- Flavour: {submitted.flavour}", "",
             "## Signature", ""]
    lines += [f"- {line}" for line in report.lines()]
    lines += ["", "## Decision", "", "Refused before evaluation: the model cannot be fed the decider's features."]
    return "\n".join(lines) + "\n"


def submit_model(settings: Settings, decider: DeciderDeclaration, source: str | Path, *, submitted_by: str,
                 evaluation_source: str | None = None, note: str = "") -> SubmissionResult:
    """Check and register a submitted model as a pending candidate of ``decider`` (see the module
    docstring); a refused one is recorded with its reasons. Raises :class:`SubmissionError` when
    the source is not a readable model of an accepted flavour."""
    from mlp_platform.application_lifecycle import SOURCES
    from mlp_platform.registry.mlflow_registry import git_sha

    if decider.request.schema_name != "application":
        raise SubmissionError(f"decider {decider.name!r}: submissions are taken by application deciders; the "
                              f"{decider.name} decider's candidates come from its dated training pipeline")
    evaluation_source = evaluation_source or decider.submission.default_source
    if evaluation_source not in SOURCES:
        raise SubmissionError(f"evaluation source {evaluation_source!r}: one of {', '.join(SOURCES)}")
    registry = registry_for(settings, decider)
    audit = audit_for(settings, decider)
    spec = decider.spec
    with tempfile.TemporaryDirectory() as tmp:
        submitted = read_submission(source, settings, Path(tmp), allow_pickle=decider.submission.allow_pickle)
        if submitted.flavour not in decider.submission.flavours:
            raise SubmissionError(f"flavour {submitted.flavour}: decider {decider.name} accepts "
                                  f"{', '.join(decider.submission.flavours)}")
        report = check_signature(submitted.inputs, spec.feature_names)
        record = {"submitted_by": submitted_by, "origin": submitted.origin, "flavour": submitted.flavour,
                  "serialization": submitted.serialization, "trusted_types": list(submitted.trusted_types),
                  "evaluation_source": evaluation_source, "note": note, "signature": report.as_dict()}
        tags = {"decider": decider.name, "submitted_by": submitted_by, "origin": submitted.origin[:500],
                "flavour": submitted.flavour}
        if not report.ok:
            card = rejection_card(decider, submitted, report, submitted_by)
            run_id = registry.log_record_run({**tags, "submission": REJECTED},
                                             {"submission.json": record, SUBMISSION_CARD: card})
            entry = audit.append("submission_refused", model=decider.model_name, version=None, training_run=run_id,
                                 actor=submitted_by, reason="; ".join(report.lines()), origin=submitted.origin)
            return SubmissionResult(decider.name, False, report, submitted.flavour, submitted.origin, None, run_id,
                                    entry["seq"], card)
        version_tags = {"feature_spec_hash": spec.spec_hash, "code_version": git_sha(settings.project_root),
                        "operating_threshold": "0.5", "decider": decider.name, "source": evaluation_source,
                        "submission": PENDING, "submitted_by": submitted_by, "flavour": submitted.flavour,
                        "evaluation_source": evaluation_source}
        if submitted.flavour == "lightgbm":
            ref = registry.log_booster(submitted.booster, spec.feature_names, params={"submitted": "true"}, metrics={},
                                       tags={**tags, "submission": PENDING}, version_tags=version_tags,
                                       artifacts={"submission.json": record})
        else:
            ref = registry.log_model_dir(submitted.path, spec.feature_names, tags={**tags, "submission": PENDING},
                                         version_tags=version_tags, artifacts={"submission.json": record})
    entry = audit.append("submission", model=ref.name, version=ref.version, training_run=ref.run_id,
                         actor=submitted_by, reason=f"submitted from {submitted.origin}; pending evaluation on "
                                                    f"{evaluation_source} data", flavour=submitted.flavour)
    card = (f"# Model card: {ref.name} v{ref.version} (decider {decider.name}): pending evaluation\n\n"
            f"- Submitted by: {submitted_by}\n- From: {submitted.origin}\n- Flavour: {submitted.flavour}\n"
            f"- {report.lines()[0]}\n")
    registry.log_text(ref.run_id, card, SUBMISSION_CARD)
    return SubmissionResult(decider.name, True, report, submitted.flavour, submitted.origin, ref, ref.run_id,
                            entry["seq"], card)


def pending_submissions(settings: Settings, decider: DeciderDeclaration) -> list[dict[str, str]]:
    """The decider's submitted versions still waiting for evaluation, oldest first: each
    ``{"version", "evaluation_source", "submitted_by"}``."""
    registry = registry_for(settings, decider)
    out = []
    for mv in registry.versions():
        tags = dict(mv.tags)
        if tags.get("submission") == PENDING:
            out.append({"version": str(mv.version), "evaluation_source": tags.get("evaluation_source", ""),
                        "submitted_by": tags.get("submitted_by", "")})
    return sorted(out, key=lambda s: int(s["version"]))



def submission_run_config(decider_name: str, version: str, source: str) -> dict:
    """The Dagster run config of a decider's submission run (its graph's ops are ``<decider>__<asset>``):
    the version to judge and the data to judge it on. The sensor and ``mlp demo`` use it."""
    return {"ops": {f"{decider_name}__applications": {"config": {"source": source}},
                    f"{decider_name}__candidate_model": {"config": {"submitted_version": version}}}}
