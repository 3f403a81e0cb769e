"""The registry as the scoring service reads it from an MLflow tracking server: its public REST API
(``/api/2.0/mlflow/...``) and artefact proxy (``/api/2.0/mlflow-artifacts/...``), without the MLflow
client.

The service reads five things: which version holds a role (an alias), a version's run and tags, its
model directory and one run artefact (the reference profile). Importing ``mlflow`` to ask for them
costs 1.4 s in the scoring image (``python -X importtime``, 7 Dec 2026) of a new pod's 3.35 s start to
ready; these are six small GETs (``bench/bench_startup.py`` measures both readers in one run).
Everything that writes (training, promotion, submission) keeps the MLflow client
(:class:`~mlp_platform.registry.mlflow_registry.ModelRegistry`), and so does a service on the embedded
SQLite store (a laptop): :func:`read_only_registry` chooses.

Artefacts: ``mlflow-artifacts:`` URIs (a server started with ``--serve-artifacts``, as
``deploy/platform/mlflow.yaml`` runs it) are fetched through the proxy, ``file:`` URIs (a server on
this machine) are copied; any other store (``s3://`` with no proxy) is left to MLflow's own download.
Credentials and TLS come from the settings (:class:`~mlp_platform.settings.TrackingServerAuth`: the
variables the MLflow client reads). File names the server lists are checked (no path separators, no
``..``): a hostile listing cannot write outside the download directory.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mlp_platform.registry.mlflow_registry import ModelVersionRef

#: Seconds per request (a tracking server that does not answer must not hang a pod's start).
TIMEOUT_S = 10.0
_API = "/api/2.0/mlflow"
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


class RegistryReadError(RuntimeError):
    """The tracking server refused or failed a read (its status, error code and message)."""

    def __init__(self, text: str, status: int = 0, error_code: str = "", message: str = ""):
        super().__init__(text)
        self.status, self.error_code, self.message = status, error_code, message


class _NotFound(RegistryReadError):
    pass


def is_tracking_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class TrackingServerRegistry:
    """Read-only: the roles, versions and artefacts of one registered model on a tracking server."""

    def __init__(self, tracking_uri: str, model_name: str, auth=None, timeout_s: float = TIMEOUT_S):
        if not is_tracking_server(tracking_uri):
            raise ValueError(f"{tracking_uri!r} is not an http(s) tracking server")
        self.tracking_uri = tracking_uri.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._headers: dict[str, str] = {}
        self._context: ssl.SSLContext | None = None
        if auth is not None:
            if auth.token:
                self._headers["Authorization"] = f"Bearer {auth.token}"
            elif auth.username:
                pair = f"{auth.username}:{auth.password}".encode()
                self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            if self.tracking_uri.startswith("https://"):
                if auth.insecure_tls:  # asked for by MLFLOW_TRACKING_INSECURE_TLS
                    self._context = ssl.create_default_context()
                    self._context.check_hostname = False
                    self._context.verify_mode = ssl.CERT_NONE
                elif auth.server_cert_path:
                    self._context = ssl.create_default_context(cafile=auth.server_cert_path)

    @classmethod
    def from_settings(cls, settings, decider) -> TrackingServerRegistry:
        return cls(settings.mlflow_tracking_uri, decider.model_name, settings.mlflow_auth)

    # --- HTTP ------------------------------------------------------------------------------------
    def _open(self, url: str):
        request = urllib.request.Request(url, headers=self._headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as err:
            body = err.read(2000).decode(errors="replace")
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}
            code, message = str(doc.get("error_code", "")), str(doc.get("message", body))
            kind = _NotFound if err.code == 404 or code == "RESOURCE_DOES_NOT_EXIST" else RegistryReadError
            raise kind(f"{url}: {err.code} {code} {message}".replace("  ", " "), err.code, code, message) from None
        except (urllib.error.URLError, OSError) as err:
            raise RegistryReadError(f"{url}: {err}") from None

    def _get(self, endpoint: str, **params: str) -> dict[str, Any]:
        url = f"{self.tracking_uri}{_API}/{endpoint}?{urllib.parse.urlencode(params)}"
        with self._open(url) as response:
            return json.loads(response.read())

    # --- roles and versions ----------------------------------------------------------------------
    def alias(self, role: str) -> str | None:
        """The version holding a role, or None."""
        try:
            doc = self._get("registered-models/alias", name=self.model_name, alias=role)
        except _NotFound:  # no such registered model
            return None
        except RegistryReadError as err:  # the server's answer for a role no version holds
            if err.error_code == "INVALID_PARAMETER_VALUE" and "not found" in err.message:
                return None
            raise
        return str(doc["model_version"]["version"])

    def _version(self, version: str) -> dict[str, Any]:
        return self._get("model-versions/get", name=self.model_name, version=str(version))["model_version"]

    def ref(self, version: str) -> ModelVersionRef:
        mv = self._version(version)
        return ModelVersionRef(self.model_name, str(mv["version"]), mv.get("run_id", ""))

    def version_tags(self, version: str) -> dict[str, str]:
        return {t["key"]: t.get("value", "") for t in self._version(version).get("tags", [])}

    # --- artefacts -------------------------------------------------------------------------------
    def model_dir(self, version: str) -> Path:
        """A local copy of the version's MLflow model directory (a new temporary directory)."""
        uri = self._get("model-versions/get-download-uri", name=self.model_name,
                        version=str(version))["artifact_uri"]
        dest = Path(tempfile.mkdtemp(prefix="mlp-model-"))
        return self._download(uri, dest, directory=True)

    def load_text(self, run_id: str, path: str) -> str | None:
        """A text artefact of a run, or None when the run has no such artefact."""
        run_root = self._get("runs/get", run_id=run_id)["run"]["info"]["artifact_uri"]
        with tempfile.TemporaryDirectory(prefix="mlp-artefact-") as tmp:
            try:
                local = self._download(f"{run_root.rstrip('/')}/{path}", Path(tmp) / Path(path).name,
                                       directory=False)
            except (_NotFound, FileNotFoundError):
                return None
            return local.read_text()

    def _download(self, uri: str, dest: Path, *, directory: bool) -> Path:
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme == "mlflow-artifacts":
            base = self.tracking_uri
            if parsed.netloc:  # mlflow-artifacts://host:port/...: that host, the tracking URI's scheme
                base = f"{urllib.parse.urlparse(self.tracking_uri).scheme}://{parsed.netloc}"
            path = parsed.path.strip("/")
            if directory:
                self._fetch_tree(base, path, dest)
            else:
                self._fetch_file(base, path, dest)
            return dest
        if parsed.scheme in ("file", ""):
            source = Path(urllib.request.url2pathname(parsed.path))
            if directory:
                shutil.copytree(source, dest, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, dest)
            return dest
        from mlflow.artifacts import download_artifacts  # another store (s3://, gs://...) without a proxy

        target = dest if directory else dest.parent
        return Path(download_artifacts(artifact_uri=uri, dst_path=str(target), tracking_uri=self.tracking_uri))

    def _fetch_file(self, base: str, path: str, dest: Path) -> None:
        url = f"{base}{_ARTIFACTS}/{urllib.parse.quote(path)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._open(url) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)

    def _fetch_tree(self, base: str, path: str, dest: Path) -> None:
        url = f"{base}{_ARTIFACTS}?{urllib.parse.urlencode({'path': path})}"
        with self._open(url) as response:
            files = json.loads(response.read()).get("files", [])
        if not files:
            raise _NotFound(f"{url}: no artefacts under {path!r}")
        dest.mkdir(parents=True, exist_ok=True)
        for entry in files:
            name = entry.get("path", "")
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise RegistryReadError(f"{url}: the server listed an unsafe artefact name {name!r}")
            if entry.get("is_dir"):
                self._fetch_tree(base, f"{path}/{name}", dest / name)
            else:
                self._fetch_file(base, f"{path}/{name}", dest / name)


def read_only_registry(settings, decider):
    """The registry the scoring service reads: :class:`TrackingServerRegistry` on a tracking server,
    the MLflow client (:class:`~mlp_platform.registry.mlflow_registry.ModelRegistry`) on any other
    store (the embedded SQLite one)."""
    if is_tracking_server(settings.mlflow_tracking_uri):
        return TrackingServerRegistry.from_settings(settings, decider)
    from mlp_platform.registry.mlflow_registry import ModelRegistry

    return ModelRegistry.from_settings(settings, decider)
