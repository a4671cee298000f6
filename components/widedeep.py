"""Components of the wide & deep pipeline: Instacart data -> bronze -> gold -> train -> evaluate -> register.

Each calls one step function (kuberec.ingest.steps for the data, kuberec.widedeep.steps for the model). The
model steps pass the training run's MLflow id along; the model
itself moves between them as that run's artifacts, so the components share no file system.
"""

from typing import NamedTuple

from kfp.dsl import ClassificationMetrics, Markdown, Metrics, Model, Output

from components import component, training_component


@component
def instacart_source(source: str, users: int, seed: int) -> str:
    """The Instacart CSV directory: `source` when given, else `users` generated users (seed `seed`) under
    <home>/data/instacart-synth, reused when already generated with the same users and seed. On the Kubernetes
    backend the files are staged in the lake and the returned location is there (the next task's pod reads them).

    Generating 5,000 users takes about a second and gives ~240k candidate (user, product) examples; Instacart
    has 206,209 users.
    """
    from kuberec.ingest import steps
    from kuberec.settings import load_settings

    return steps.instacart_source(load_settings(), source, users, seed)


@component
def ingest_instacart(source: str) -> dict:
    """Spark job: validate the six CSV files and (re)write the bronze Delta tables whose file changed; returns
    {table: version}. An unchanged re-run writes nothing and starts no Spark."""
    from kuberec.ingest import steps
    from kuberec.settings import load_settings

    return steps.ingest_instacart(load_settings(), source)


@component
def build_features(bronze: dict) -> NamedTuple("ExamplesTable", table_uri=str, table_version=int):
    """Spark job: gold features, labels and train/valid/test split from the bronze versions `bronze` (the ingest
    step's output); skipped when the gold tables were already built from them. Returns the examples table."""
    from collections import namedtuple

    from kuberec.ingest import steps
    from kuberec.settings import load_settings

    table = steps.build_features(load_settings())
    return namedtuple("ExamplesTable", ["table_uri", "table_version"])(table.uri, table.version)


@component
def train_widedeep(table_uri: str, table_version: int, config_json: str, workers: int, sweep_run_id: str,
                   kfp_run_id: str = "", kfp_run_name: str = "") -> str:
    """Horovod job (`workers` processes locally via horovodrun, an MPIJob on Kubernetes): train on the examples
    table at `table_version` with WideDeepConfig fields from `config_json` (a JSON object; missing fields keep their
    defaults); sweep_run_id: the sweep that chose them ("" = none); kfp_run_id/kfp_run_name: the pipeline run, as
    tags of the MLflow run. Returns the MLflow run id that holds params, lineage, per-epoch metrics and the model."""
    import json

    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps
    from kuberec.widedeep.config import WideDeepConfig

    config = WideDeepConfig.from_dict(json.loads(config_json or "{}"))
    return steps.train(load_settings(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name),
                       TableRef(table_uri, table_version), config, workers=workers,
                       sweep_run_id=sweep_run_id or None)


@training_component
def evaluate_widedeep(run_id: str, table_uri: str, table_version: int, metrics: Output[Metrics],
                      classification: Output[ClassificationMetrics]) -> dict:
    """Score the run's model, wide-only and deep-only (both trained here with the same config and budget, so this
    takes about twice the training time), popularity and gradient-boosted-trees baselines on the test split; logs
    the metrics into the run. Returns them as tracked: auc, user_auc, log_loss, map_at_10, recall_at_10,
    f1 of the run's model, and `<baseline>_<metric>` of each baseline; `metrics` holds them for KFP's run
    comparison, `classification` the model's ROC curve and its confusion matrix at its basket threshold."""
    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps

    result = steps.evaluate(load_settings(), run_id, TableRef(table_uri, table_version))
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    classification.log_roc_curve(result.roc["fpr"], result.roc["tpr"], result.roc["thresholds"])
    classification.log_confusion_matrix(["not reordered", "reordered"], result.confusion)
    return result.metrics()


@component
def register_widedeep(run_id: str, champion: str, champion_tolerance: float, model_name: str,
                      model: Output[Model], report: Output[Markdown], kfp_run_id: str = "",
                      kfp_run_name: str = "") -> NamedTuple("RegisteredModel", model_uri=str, version=int,
                                                            champion=bool, decision=dict):
    """Log the run's model with its gold features as an MLflow pyfunc and register it as a version of
    `model_name`. `champion` (gate, always, never) decides whether it takes the `champion` alias: gate scores it
    and the champion by per-user AUC on the test split it trained with. `model` and `report` show the version,
    the decision and their MLflow links."""
    from collections import namedtuple

    from kuberec.reports import write_registration
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps

    settings = load_settings(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name)
    registered = steps.register(settings, run_id, policy=champion, tolerance=champion_tolerance, name=model_name)
    model.metadata.update(write_registration(settings, registered, model.path, report.path))
    return namedtuple("RegisteredModel", ["model_uri", "version", "champion", "decision"])(
        registered.model_uri, registered.version, registered.champion, registered.decision.to_dict())
