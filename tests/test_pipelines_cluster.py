"""What kuberec sends to a Kubeflow Pipelines cluster: the pods' settings in every compiled task, and the package
`make pipeline-upload` and runs submitted with KFP_HOST upload.

No Kubeflow Pipelines server runs here: `kfp.Client` is replaced by a recorder that keeps what would be sent (the
package file, names, the run's service account) and answers with ids as the KFP API would. The real exchange with
a KFP API server is not tested.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import yaml

from components import OPTIONAL_SETTINGS, REQUIRED_SETTINGS, SECRETS, SETTINGS_CONFIG_MAP
from kuberec.backends.k8s.naming import POD_NAME_ENV, POD_NAMESPACE_ENV
from pipelines import run

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


def compiled(name: str, tmp_path) -> dict:
    """The pipeline spec, with the platform spec (a second YAML document, when there is one) merged in."""
    documents = list(yaml.safe_load_all(run.compile_pipeline(name, tmp_path).read_text()))
    return {key: value for document in documents for key, value in document.items()}


@pytest.mark.parametrize("name", sorted(run.PIPELINES))
def test_every_task_gets_the_cluster_settings(name, tmp_path):
    spec = compiled(name, tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    configured = (spec.get("platforms") or {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    assert set(configured) == set(executors), "tasks without configure_for_cluster"
    for executor, config in configured.items():
        by_optional = {entry["optional"]: {m["envVar"] for m in entry["keyToEnv"]}
                       for entry in config["configMapAsEnv"] if entry["configMapName"] == SETTINGS_CONFIG_MAP}
        assert by_optional == {False: set(REQUIRED_SETTINGS), True: set(OPTIONAL_SETTINGS)}, executor
        secrets = {entry["secretName"]: ({m["envVar"] for m in entry["keyToEnv"]}, entry["optional"])
                   for entry in config["secretAsEnv"]}
        assert secrets == {secret: (set(keys), True) for secret, keys in SECRETS}, executor
        assert config["podMetadata"]["labels"]["app.kubernetes.io/part-of"] == "kuberec"
        # The pod's own name, which the jobs it creates carry for the cluster's kuberec-reaper.
        assert {(entry["name"], entry["fieldPath"]) for entry in config["fieldPathAsEnv"]} == \
            {(POD_NAMESPACE_ENV, "metadata.namespace"), (POD_NAME_ENV, "metadata.name")}, executor
    # The components only create custom resources; the MPIJobs and RayJobs request the GPUs.
    assert "nvidia.com/gpu" not in json.dumps(spec) and "accelerator" not in json.dumps(spec["deploymentSpec"])


def test_settings_cover_the_backend_options():
    from kuberec.backends.k8s.options import OPTION_ENV_VARS
    from kuberec.backends.k8s.pods import LOCAL_ONLY_ENV
    from kuberec.settings import ENV_VARS

    wanted = {var for var in ENV_VARS.values() if var not in LOCAL_ONLY_ENV} | set(OPTION_ENV_VARS)
    assert set(REQUIRED_SETTINGS) | set(OPTIONAL_SETTINGS) == wanted
    assert "KUBEREC_K8S_GPU_TOLERATIONS" in OPTION_ENV_VARS and "KUBEREC_K8S_POD_MLFLOW_URI" in OPTION_ENV_VARS


# -- upload and submit -------------------------------------------------------------------------------------------
class RecordingClient:
    """Stands in for kfp.Client (no KFP server here): keeps each call and the package file's text."""

    pipelines: dict[str, str] = {}  # display name -> id, across clients (the "server" state)
    calls: list[tuple] = []

    def __init__(self, host: str):
        self.host = host

    def get_pipeline_id(self, name: str):
        return self.pipelines.get(name)

    def upload_pipeline(self, package: str, pipeline_name: str, description: str):
        self.calls.append(("upload_pipeline", pipeline_name, description, open(package).read()))
        self.pipelines[pipeline_name] = f"p-{len(self.pipelines) + 1}"
        return SimpleNamespace(pipeline_id=self.pipelines[pipeline_name])

    def list_pipeline_versions(self, pipeline_id: str, page_size: int):
        name = next(n for n, i in self.pipelines.items() if i == pipeline_id)
        return SimpleNamespace(pipeline_versions=[SimpleNamespace(display_name=name, pipeline_version_id="v-1")])

    def upload_pipeline_version(self, package: str, pipeline_version_name: str, pipeline_id: str, description: str):
        self.calls.append(("upload_pipeline_version", pipeline_version_name, pipeline_id, open(package).read()))
        return SimpleNamespace(pipeline_version_id=f"v-{len(self.calls)}")

    def create_run_from_pipeline_package(self, package: str, **kwargs):
        self.calls.append(("create_run", kwargs, open(package).read()))
        return SimpleNamespace(run_id="r-1")


@pytest.fixture
def kfp_client(monkeypatch, settings):
    import kfp

    RecordingClient.pipelines, RecordingClient.calls = {}, []
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    monkeypatch.setenv("KFP_HOST", "https://kfp.example.com/pipeline/")
    return RecordingClient


def summary_of(output: str) -> dict:
    return json.loads(output.split("== kuberec pipeline summary ==", 1)[1])


def settings_tag() -> str:
    from kuberec.settings import load_settings

    return load_settings().image_tag


def test_upload_needs_kfp_host(settings, monkeypatch, kfp_client):
    monkeypatch.delenv("KFP_HOST")
    with pytest.raises(run.PipelineError, match="--upload needs KFP_HOST"):
        run.main(["catalog", "--upload"])
    assert kfp_client.calls == []


def test_upload_refuses_run_parameters(kfp_client, capsys):
    with pytest.raises(SystemExit):
        run.main(["catalog", "--upload", "--param", "max_per_split=5"])
    assert "--param sets a run's inputs" in capsys.readouterr().err


def test_upload_creates_the_pipeline_then_adds_versions(kfp_client, capsys, tmp_path):
    expected = run.compile_pipeline("catalog", tmp_path).read_text()

    assert run.main(["catalog", "--upload"]) == 0
    first = summary_of(capsys.readouterr().out)["catalog"]
    (call, name, description, package), = kfp_client.calls
    assert (call, name) == ("upload_pipeline", "kuberec-catalog") and "Spark" in description
    assert package == expected  # the compiled pipeline, platform config included
    assert first == {"pipeline": "kuberec-catalog", "pipeline_id": "p-1", "version": "kuberec-catalog",
                     "version_id": "v-1", "url": "https://kfp.example.com/pipeline/#/pipelines/details/p-1/version/v-1"}

    assert run.main(["catalog", "--upload"]) == 0
    second = summary_of(capsys.readouterr().out)["catalog"]
    call, version, pipeline_id, package = kfp_client.calls[-1]
    assert (call, pipeline_id, package) == ("upload_pipeline_version", "p-1", expected)
    assert re.fullmatch(rf"{re.escape(settings_tag())}-\d{{8}}-\d{{6}}", version)
    assert second["version"] == version
    assert second["url"] == f"https://kfp.example.com/pipeline/#/pipelines/details/p-1/version/{second['version_id']}"


def test_submit_runs_the_compiled_package_as_kuberec_runner(kfp_client, capsys, tmp_path):
    assert run.main(["catalog", "--param", "max_per_split=7"]) == 0
    (call, kwargs, package), = kfp_client.calls
    assert call == "create_run" and package == run.compile_pipeline("catalog", tmp_path).read_text()
    assert kwargs["service_account"] == "kuberec-runner" and kwargs["arguments"] == {"max_per_split": 7}
    assert kwargs["experiment_name"] == "kuberec"
    assert summary_of(capsys.readouterr().out)["catalog"]["run_url"] == \
        "https://kfp.example.com/pipeline/#/runs/details/r-1"


def test_all_refuses_one_model_name_for_both_pipelines(kfp_client, capsys):
    with pytest.raises(SystemExit):
        run.main(["all", "--param", "model_name=shared"])
    assert "--param model_name names one model's registered model" in capsys.readouterr().err
    assert kfp_client.calls == []
