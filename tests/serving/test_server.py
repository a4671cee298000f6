"""`kuberec serve` for real: KServe's model server with kuberec's runtime, real requests, bad input, the CLI."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_helpers import MODEL, png_b64

from kuberec import cli, inference
from kuberec.ports import free_port
from kuberec.serving import repository
from kuberec.serving.refusals import bad_requests
from kuberec.serving.server import SOURCE_FILE, ModelServer, ModelSpec, ServingError, default_workers, fetch_model
from kuberec.similarity import serving as similarity_serving


def similar(url: str, **query) -> list[dict]:
    return similarity_serving.recommend(url, model=MODEL, **query)


def test_repository_points_at_the_cached_registry_version(model_server, serving_settings, registered):
    spec = repository.read_json(model_server.repo / MODEL / repository.SPEC_FILE)
    cached = serving_settings.home / "serving" / "models" / MODEL / f"v{registered.version}"
    assert spec == {"uri": str(cached), "registry_version": str(registered.version)}
    assert (cached / "MLmodel").exists() and registered.run_id in (cached / SOURCE_FILE).read_text()
    # Every server process says which version it loaded.
    for process in model_server.processes:
        status = repository.read_json(repository.status_path(model_server.repo, MODEL, process.pid))
        assert status == {"registry_version": str(registered.version), "error": None}
    # A second resolve reuses the cached copy instead of downloading again.
    before = (cached / "MLmodel").stat().st_mtime_ns
    again = fetch_model(serving_settings, ModelSpec(MODEL, alias="champion"))
    assert again.path == cached and (cached / "MLmodel").stat().st_mtime_ns == before


def test_listens_on_loopback_only(model_server):
    import psutil

    # gRPC binds an IPv6 socket to the IPv4-mapped loopback address: loopback all the same.
    listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for p in model_server.processes
                 for c in psutil.Process(p.pid).connections("inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", model_server.http_port), ("127.0.0.1", model_server.grpc_port)}


def test_health_endpoints_and_model_metadata(model_server):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        with urllib.request.urlopen(model_server.url + path, timeout=30) as response:
            assert response.status == 200
    with urllib.request.urlopen(f"{model_server.url}/v2/models/{MODEL}", timeout=30) as response:
        metadata = json.loads(response.read())
    assert {i["name"] for i in metadata["inputs"]} == {"image_b64", "pixels", "item_id"}


def test_similar_by_png_pixels_and_item_id(model_server, catalog):
    images, labels = catalog
    by_image = similar(model_server.url, image=base64.b64decode(png_b64(images[7], size=56)))
    assert len(by_image) == 5 and by_image[0]["item_id"] == 7  # resized back to 28x28
    assert by_image[0]["label"] == labels[7] and by_image[0]["label_name"]
    by_pixels = similar(model_server.url, image=images[12], k=3)
    assert [r["rank"] for r in by_pixels] == [1, 2, 3] and by_pixels[0]["item_id"] == 12
    by_item = similar(model_server.url, item_id=30, k=8)
    assert len(by_item) == 8 and 30 not in [r["item_id"] for r in by_item]
    distances = [r["distance"] for r in by_item]
    assert distances == sorted(distances)


def test_batch_of_mixed_queries_in_one_request(model_server, catalog):
    images, _ = catalog
    columns = similarity_serving.request_columns([images[1], base64.b64decode(png_b64(images[2]))], [3, 4])
    out = inference.rows(inference.infer(model_server.url, MODEL, columns, {"k": 2}))
    assert len(out) == 8 and sorted({r["query"] for r in out}) == [0, 1, 2, 3]
    first = {r["query"]: r["item_id"] for r in out if r["rank"] == 1}
    assert first[0] == 1 and first[1] == 2
    assert 3 not in [r["item_id"] for r in out if r["query"] == 2]


def test_thumbnails_by_id_come_from_the_model(model_server, catalog):
    images, _ = catalog
    out = similar(model_server.url, item_id=9, k=2, with_images=True, include_query=True)
    assert [r["rank"] for r in out] == [0, 1, 2] and out[0]["item_id"] == 9
    import io

    for row in out:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["image_png_b64"]))))
        assert np.array_equal(picture, images[row["item_id"]])


BAD_REQUESTS = bad_requests(MODEL)


@pytest.mark.parametrize("request_", BAD_REQUESTS, ids=[r.case for r in BAD_REQUESTS])
def test_bad_input_is_a_4xx_naming_the_problem_and_the_server_keeps_serving(model_server, request_):
    assert request_.check(model_server.url) == ""
    assert len(similar(model_server.url, item_id=2, k=3)) == 3


def test_client_raises_the_servers_message(model_server):
    with pytest.raises(inference.ServingRequestError, match="k must be between") as raised:
        similar(model_server.url, item_id=1, k=500)
    assert raised.value.status == 400


def test_recommend_cli_prints_a_table(model_server, catalog, tmp_path, capsys):
    images, _ = catalog
    path = tmp_path / "query.png"
    Image.fromarray(images[20]).save(path)
    assert cli.main(["recommend", "--image", str(path), "--k", "3", "--url", model_server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "item_id", "distance", "label", "label_name"]
    assert len(lines) == 5 and lines[2].split()[1] == "20"
    assert cli.main(["recommend", "--item-id", "999999", "--url", model_server.url]) == 2
    assert "unknown item_id 999999" in capsys.readouterr().err
    # Each model's options come from its record; two models' options in one request are refused before asking.
    assert cli.main(["recommend", "--item-id", "3", "--candidates", "1,2", "--url", model_server.url]) == 2
    assert "--item-id (image similarity); --candidates (wide & deep)" in capsys.readouterr().err
    assert cli.main(["recommend", "--image", str(tmp_path / "missing.png"), "--url", model_server.url]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err


def test_serve_restarts_from_the_cache_and_stops_cleanly_on_sigterm(model_server, serving_settings, registered):
    """`kuberec serve` as users run it: a pinned cached version starts without the registry; SIGTERM exits 0.
    With two server processes sharing the ports, both answering."""
    port = free_port()
    env = {**os.environ, "KUBEREC_HOME": str(serving_settings.home),
           "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # unreachable: the cache must be enough
    process = subprocess.Popen([sys.executable, "-m", "kuberec.cli", "serve", "--models",
                                f"{MODEL}:{registered.version}", "--port", str(port), "--grpc-port",
                                str(free_port()), "--workers", "2"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        first = process.stdout.readline()
        while first and not first.startswith("serving "):
            first = process.stdout.readline()
        assert first.startswith(f"serving {MODEL} v{registered.version} at http://127.0.0.1:{port}"), first
        for _ in range(8):  # new connections, spread by the kernel over both processes
            assert len(similar(f"http://127.0.0.1:{port}", item_id=5)) == 5
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    with pytest.raises(inference.ServingRequestError, match="cannot reach"):
        similar(f"http://127.0.0.1:{port}", item_id=5)


def test_serving_an_unregistered_model_is_a_clear_error(serving_settings, monkeypatch, capsys):
    monkeypatch.setenv("KUBEREC_HOME", str(serving_settings.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", serving_settings.mlflow_tracking_uri)
    assert cli.main(["serve", "--models", "kuberec-nothing", "--port", str(free_port()),
                     "--grpc-port", str(free_port())]) == 2
    assert "'kuberec-nothing' has no alias @champion" in capsys.readouterr().err


def test_worker_processes_follow_the_cpus():
    assert [default_workers(cpus) for cpus in (1, 2, 3, 8)] == [1, 1, 3, 8]
    with pytest.raises(ServingError, match="workers must be 1 or more"):
        ModelServer(Path("/nonexistent"), [], Path("/nonexistent.log"), http_port=1, grpc_port=2, workers=0)


@pytest.mark.fast
def test_servers_listen_on_loopback_unless_told_and_say_so_when_told(tmp_path):
    from kuberec.settings import exposure_warning

    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exposure_warning(loopback, "the model server") is None
    for elsewhere in ("0.0.0.0", "::", "10.1.2.3", "my-host"):
        assert "no authentication" in exposure_warning(elsewhere, "the model server")
    command = ModelServer(tmp_path, [], tmp_path / "log", http_port=1, grpc_port=2).command()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    for verb in ("serve", "demo"):
        assert cli.build_parser([verb]).parse_args([verb]).host == "127.0.0.1"
