"""MLflow for kuberec: where the tracking server is, runs with data lineage, and the model registry.

`tracking_uri(settings)` is `MLFLOW_TRACKING_URI` (or `mlflow_tracking_uri` in the config) when set: the in-cluster
server, a team server. Otherwise it is kuberec's own embedded server (`kuberec.tracking.server`), started on first use;
with it, MLflow's client gives up on a silent server after about 15 s instead of 4 minutes, and `reconnecting`
starts the server again for a call that found it gone (what a training job's rank 0 does after each epoch).

Every run records the Delta table versions it read as tags `kuberec.lineage.<table>=<uri>@v<version>`, so a model
version traces back to its exact data. The registry helpers wrap names, versions and the `champion` alias.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

from kuberec.errors import KuberecError
from kuberec.settings import Settings, redact_uri
from kuberec.tracking import server as mlflow_server

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Where every model build's run keeps its outputs: the training job's (model, results) and the evaluation's.
TRAIN_ARTIFACTS = "train"
EVALUATION_ARTIFACTS = "evaluation"
LINEAGE_PREFIX = "kuberec.lineage."
SWEEP_RUN_TAG = "kuberec.tuned_by_sweep_run"
# The Kubeflow Pipelines run that created an MLflow run or model version (kuberec.settings: kfp_run_*), and the
# kuberec version (the image tag) its components ran: an uploaded pipeline's versions are named after it.
KFP_RUN_ID_TAG = "kuberec.kfp.run_id"
KFP_RUN_NAME_TAG = "kuberec.kfp.run_name"
KFP_RUN_URL_TAG = "kuberec.kfp.run_url"
KUBEREC_VERSION_TAG = "kuberec.version"
# MLflow retries a failed request 7 times over about 4 minutes, for remote servers that rate-limit. The embedded
# server is on this machine: one that has not answered for ~15 s (retries after 0, 4 and 8 s) is gone, and waiting
# longer only delays the error or the restart. Set for the embedded server only; the user's own values win.
EMBEDDED_SERVER_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}

T = TypeVar("T")


class TrackingError(KuberecError):
    """An MLflow call could not be made as asked (a registry lookup failed)."""


class ModelNotFoundError(TrackingError):
    """A registered model, version or alias does not exist."""


# -- where the tracking server is -------------------------------------------------------------------------------


def tracking_uri(settings: Settings) -> str:
    """The tracking URI to use: the configured one, else the embedded server (started if needed)."""
    if not _embedded(settings):
        return settings.mlflow_tracking_uri
    return mlflow_server.ensure_server(settings).url


def ui_url(settings: Settings) -> str | None:
    """Where a browser opens MLflow: `mlflow_ui_url`, else the tracking URI when it is an http(s) server."""
    if settings.mlflow_ui_url:
        return settings.mlflow_ui_url.rstrip("/")
    uri = tracking_uri(settings)
    return redact_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else None


def run_url(settings: Settings, run_id: str) -> str | None:
    """The MLflow UI's page of a run (None when the UI's address is unknown)."""
    base = ui_url(settings)
    if base is None:
        return None
    return f"{base}/#/experiments/{client(settings).get_run(run_id).info.experiment_id}/runs/{run_id}"


def model_version_url(settings: Settings, name: str, version: int | str) -> str | None:
    base = ui_url(settings)
    return f"{base}/#/models/{name}/versions/{version}" if base else None


def kfp_run_url(settings: Settings) -> str | None:
    """The Kubeflow Pipelines UI's page of the run this step belongs to, when both are known."""
    if not (settings.kfp_ui_url and settings.kfp_run_id):
        return None
    return f"{settings.kfp_ui_url.rstrip('/')}/#/runs/details/{settings.kfp_run_id}"


def pipeline_tags(settings: Settings) -> dict[str, str]:
    """The tags that link an MLflow run or model version to the Kubeflow Pipelines run that made it (none outside
    a pipeline)."""
    if not settings.kfp_run_id:
        return {}
    tags = {KFP_RUN_ID_TAG: settings.kfp_run_id, KUBEREC_VERSION_TAG: settings.image_tag}
    if settings.kfp_run_name:  # KFP 2.17 resolves a recurring run's runs' job name placeholder to ""
        tags[KFP_RUN_NAME_TAG] = settings.kfp_run_name
    url = kfp_run_url(settings)
    return {**tags, KFP_RUN_URL_TAG: url} if url else tags


def pipeline_run_tags(settings: Settings) -> dict[str, str]:
    """`pipeline_tags` for an MLflow run, plus its description (which the MLflow UI renders as Markdown): a link
    to the Kubeflow Pipelines run, one click away, when its URL is known."""
    url = kfp_run_url(settings)
    note = {"mlflow.note.content": f"Created by Kubeflow Pipelines run [{settings.kfp_run_name or settings.kfp_run_id}]"
                                   f"({url})"} if url else {}
    return {**pipeline_tags(settings), **note}


def _embedded(settings: Settings) -> bool:
    """Whether MLflow is this home's embedded server: none is configured, or the one configured is the embedded
    server's own URL (MLflow exports the URI it is set to, so the jobs a kuberec process starts inherit it)."""
    if not settings.mlflow_tracking_uri:
        return True
    recorded = mlflow_server.recorded_server(settings)
    return recorded is not None and settings.mlflow_tracking_uri.rstrip("/") == recorded.url


def configure(settings: Settings) -> str:
    """Point this process's MLflow client (tracking and registry) at `tracking_uri(settings)`; returns it."""
    import mlflow

    uri = tracking_uri(settings)
    if _embedded(settings):
        for name, value in EMBEDDED_SERVER_RETRIES.items():
            os.environ.setdefault(name, value)  # read by MLflow at each request; inherited by the jobs it starts
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def reconnecting(settings: Settings, call: Callable[[], T], what: str) -> T:
    """`call()`, an MLflow call that may outlive the embedded server (an epoch's metrics in a long training); when
    it fails because that server is gone, start it again (`mlflow_server.ensure_server`: the same port when free,
    or wait for another process that is starting it), point this process at it and call once more. Errors of a
    configured server, or of a server that still answers, are raised as they are."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except (MlflowException, requests.RequestException) as err:
        if not _embedded(settings) or mlflow_server.running_server(settings) is not None:
            raise
        log.warning("%s: the embedded MLflow server stopped answering (%s); starting it again", what,
                    str(err).splitlines()[0][:200])
    uri = configure(settings)
    log.info("%s: MLflow server back at %s; retrying", what, uri)
    return call()


def client(settings: Settings) -> "MlflowClient":
    from mlflow.tracking import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# -- runs and lineage --------------------------------------------------------------------------------------------


def table_name(table_uri: str) -> str:
    return table_uri.rstrip("/").rsplit("/", 1)[-1]


def lineage_tags(reads: Mapping[str, int]) -> dict[str, str]:
    """Tags for the Delta tables a run read: {table URI: version} -> {kuberec.lineage.<table>: <uri>@v<version>}."""
    return {f"{LINEAGE_PREFIX}{table_name(uri)}": f"{uri}@v{int(version)}" for uri, version in reads.items()}


def parse_lineage(tags: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """The inverse of `lineage_tags`: {table name: (uri, version)} from a run's or model version's tags."""
    lineage = {}
    for key, value in tags.items():
        if key.startswith(LINEAGE_PREFIX) and "@v" in value:
            uri, _, version = value.rpartition("@v")
            lineage[key.removeprefix(LINEAGE_PREFIX)] = (uri, int(version))
    return lineage


def experiment_id(name: str) -> str:
    """Id of the experiment `name`, created if missing (safe when several processes race to create it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name)
    except MlflowException:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def start_run(settings: Settings, experiment: str, *, run_name: str | None = None,
              lineage: Mapping[str, int] | None = None, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, nested: bool = False) -> Iterator["ActiveRun"]:
    """An MLflow run in `experiment` tagged with the Delta versions it reads (`lineage`: {table URI: version})."""
    import mlflow

    configure(settings)
    all_tags = {**lineage_tags(lineage or {}), **pipeline_run_tags(settings), **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name, nested=nested,
                          tags=all_tags) as run:
        if params:
            log_params(params)
        yield run


def sweep_tags(sweep_run_id: str | None) -> dict[str, str]:
    """Tags of a training run whose config a tuning sweep chose (its MLflow parent run), or none."""
    return {SWEEP_RUN_TAG: sweep_run_id} if sweep_run_id else {}


def record_lineage(reads: Mapping[str, int]) -> None:
    """Tag the active run with Delta versions read after it started."""
    import mlflow

    mlflow.set_tags(lineage_tags(reads))


def _param_values(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
            for key, value in params.items()}


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params(_param_values(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


# -- registry ----------------------------------------------------------------------------------------------------


def model_uri(name: str, *, version: int | str | None = None, alias: str | None = None) -> str:
    """`models:/<name>/<version>` or `models:/<name>@<alias>` (default alias: champion)."""
    if version is not None:
        return f"models:/{name}/{version}"
    return f"models:/{name}@{alias or CHAMPION}"


def register_model(settings: Settings, source_uri: str, name: str, *, tags: Mapping[str, str] | None = None,
                   description: str | None = None) -> "ModelVersion":
    """Register the logged model at `source_uri` (e.g. `runs:/<id>/model`) as a new version of `name`."""
    import mlflow

    configure(settings)
    version = mlflow.register_model(source_uri, name, tags={**pipeline_tags(settings), **(tags or {})})
    if description:
        client(settings).update_model_version(name, version.version, description=description)
    return version


def set_alias(settings: Settings, name: str, version: int | str, alias: str = CHAMPION) -> None:
    client(settings).set_registered_model_alias(name, alias, str(version))
    log.info("%s@%s -> version %s", name, alias, version)


def alias_version(settings: Settings, name: str, alias: str = CHAMPION) -> "ModelVersion | None":
    """The version `alias` points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(settings: Settings, name: str, *, version: int | str | None = None,
                alias: str | None = None) -> "ModelVersion":
    """A model version by number or alias (default alias: champion); ModelNotFoundError says what exists."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        if version is not None:
            return mlflow_client.get_model_version(name, str(version))
        return mlflow_client.get_model_version_by_alias(name, alias or CHAMPION)
    except MlflowException as err:
        wanted = f"version {version}" if version is not None else f"alias @{alias or CHAMPION}"
        try:
            known = sorted(int(v.version) for v in mlflow_client.search_model_versions(f"name = '{name}'"))
        except MlflowException:
            known = []
        hint = (f"it has versions {known}" if known else
                "no versions are registered; build and register one first (kuberec index build)")
        raise ModelNotFoundError(f"registered model {name!r} has no {wanted} at {redact_uri(tracking_uri(settings))}: "
                                 f"{hint}") from err


def artifact_store_uri(settings: Settings, uri: str, artifacts_destination: str) -> str:
    """Where a model's files are in the artifact store, for readers outside MLflow (KServe's storage initializer).

    Registry (`models:/<name>@<alias>`, `models:/<name>/<version>`), logged-model (`models:/m-...`) and run
    (`runs:/<id>/<path>`) URIs are followed to the artifact location; `mlflow-artifacts:` locations, which the
    tracking server proxies, map onto its `--artifacts-destination`. Other URIs (s3://...) are returned as they are.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    for _ in range(4):  # a registered version's source is a logged model's URI, whose location is the files
        if not uri.startswith(("models:/", "runs:/")):
            break
        body = uri.split(":/", 1)[1].lstrip("/")
        try:
            if uri.startswith("runs:/"):
                run_id, _, path = body.partition("/")
                uri = f"{mlflow_client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}".rstrip("/")
            elif body.startswith("m-") and "/" not in body and "@" not in body:
                uri = mlflow_client.get_logged_model(body).artifact_location
            elif "@" in body:
                name, alias = body.split("@", 1)
                uri = get_version(settings, name, alias=alias).source
            else:
                name, _, version = body.rpartition("/")
                uri = get_version(settings, name, version=version).source
        except MlflowException as err:
            raise ModelNotFoundError(f"cannot resolve {uri} at {redact_uri(tracking_uri(settings))}: "
                                     f"{err.message}") from err
    if uri.startswith("mlflow-artifacts:"):
        path = uri.split(":", 1)[1].lstrip("/")
        if uri.startswith("mlflow-artifacts://"):  # mlflow-artifacts://<host>/<path>
            path = path.partition("/")[2]
        return f"{artifacts_destination.rstrip('/')}/{path}"
    return uri


def register_and_promote(settings: Settings, source_uri: str, name: str, *, set_champion: bool | None,
                         tags: Mapping[str, str] | None = None,
                         description: str | None = None) -> tuple["ModelVersion", bool]:
    """Register `source_uri` as a new version of `name`; (version, whether it is now the champion).

    `set_champion`: True moves the `champion` alias to the new version, False leaves it, None sets it only when the
    model has no champion yet, so a first registration is servable right away.

    The alias moves last, to a version whose artifacts were all logged before it was created: a process killed on
    the way leaves `champion` where it was, plus at most a complete version that is not champion (a rerun registers
    a new one; the stray stays loadable by number, tests/test_killed_steps.py).
    """
    version = register_model(settings, source_uri, name, tags=tags, description=description)
    champion = alias_version(settings, name) is None if set_champion is None else set_champion
    if champion:
        set_alias(settings, name, version.version)
    return version, bool(champion)


def pinned_requirements(distributions: Sequence[str]) -> list[str]:
    """`dist==<installed version>` for each distribution (unpinned when it is not installed): a model's pip list."""
    from importlib import metadata

    pins = []
    for dist in distributions:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


# -- runs that span processes ------------------------------------------------------------------------------------
# A pipeline step creates the run (params, lineage) and hands its id to the job it launches (a Horovod job: local
# processes or an MPIJob), whose rank 0 logs into it; the step then closes it with the job's outcome. Later steps
# read the run's artifacts by id, so nothing depends on a file system shared between pods.


def create_run(settings: Settings, experiment: str, *, run_name: str, lineage: Mapping[str, int] | None = None,
               params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> str:
    """A new RUNNING run with params and lineage tags, not attached to this process; returns its id."""
    from mlflow.entities import Param

    mlflow_client = client(settings)
    run = mlflow_client.create_run(experiment_id(experiment), run_name=run_name,
                                   tags={**lineage_tags(lineage or {}), **pipeline_run_tags(settings), **(tags or {})})
    if params:
        mlflow_client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in
                                                         _param_values(params).items()])
    return run.info.run_id


@contextlib.contextmanager
def continue_run(settings: Settings, run_id: str) -> Iterator["ActiveRun"]:
    """Make an existing run this process's active run (FINISHED when the block ends, FAILED when it raises)."""
    import mlflow

    configure(settings)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def end_run(settings: Settings, run_id: str, *, failed: bool = False) -> None:
    client(settings).set_terminated(run_id, "FAILED" if failed else "FINISHED")


def download_artifacts(settings: Settings, run_id: str, artifact_path: str, dst: str | Path | None = None) -> Path:
    """A run's artifact directory as a local path (downloaded from the tracking server)."""
    import mlflow

    configure(settings)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(dst) if dst else None))
