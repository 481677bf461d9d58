"""The guard service end to end, against real `neuroprint serve` processes (never an in-process app): JSON and
multipart predictions, the Open Inference Protocol through the third-party Triton client, health, metrics and the
OpenAPI document, API keys, the ownership HTTP client, per-request draws, micro-batching, and a malformed-input
suite (hand-written cases plus property-based bodies from the live OpenAPI schemas) in which every answer must be
a 4xx with a one-line JSON error, never a 5xx.

Servers: the session's `guard_url` (secure draws, no key) serves almost everything; two more start here, one with
an API key and one with `--seeded` draws.
"""
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from guard_server import running_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from neuroprint.data import DataSplits
from neuroprint.guard import Guard
from neuroprint.guard.inputs import image_from_bytes, image_to_png
from neuroprint.ownership.ipguard import generate_ipguard_queries
from neuroprint.ownership.verify import HTTPSuspect

DETECTORS = {"bank", "mahalanobis"}
API_KEY = "np-test-key-7f3a9c"
INFER = "/v2/models/guard/infer"
TIMEOUT = 10.0


# -- fixtures and helpers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(digits: DataSplits) -> torch.Tensor:
    """32 digits test images `[32, 1, 8, 8]` in [0, 1]."""
    return digits.test.x[:32].clone()


@pytest.fixture(scope="module")
def local_guard(guard_dir: Path) -> Guard:
    """The served guard, loaded in this process (seeded draws) to compute the expected answers."""
    return Guard.load(guard_dir, draws="seeded")


@pytest.fixture(scope="module")
def expected(local_guard: Guard, images: torch.Tensor) -> list[int]:
    """The model's labels for `images`."""
    return local_guard.score(images).labels.tolist()


@pytest.fixture(scope="module")
def client(guard_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guard_url, timeout=TIMEOUT) as http:
        yield http


@pytest.fixture(scope="module")
def key_url(guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that requires `API_KEY` (read from a file, with a trailing newline)."""
    keyfile = tmp_path_factory.mktemp("apikey") / "key.txt"
    keyfile.write_text(API_KEY + "\n")
    with running_server(guard_dir, "--api-key-file", str(keyfile)) as url:
        yield url


@pytest.fixture(scope="module")
def seeded_url(guard_dir: Path) -> Iterator[str]:
    """A server with reproducible (seeded) detector draws."""
    with running_server(guard_dir, "--seeded") as url:
        yield url


def as_lists(x: torch.Tensor) -> list[Any]:
    return x.tolist()


def predict(client: httpx.Client, x: torch.Tensor) -> dict[str, Any]:
    response = client.post("/v1/predict", json={"inputs": as_lists(x)})
    assert response.status_code == 200, response.text
    return response.json()


def bank_scores(body: dict[str, Any]) -> list[float]:
    return [p["detectors"]["bank"]["score"] for p in body["predictions"]]


def assert_json_error(response: httpx.Response, status: int | None = None) -> str:
    """A client error: 4xx (or exactly `status`), JSON `{"error": "<one line>"}`; returns the message."""
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    if status is not None:
        assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message.strip() and "\n" not in message and "\r" not in message, body
    return message


def metric_samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, keyed by (sample name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def batch_histogram(client: httpx.Client) -> tuple[float, float]:
    """(micro-batches run, of which with a single image) from `neuroprint_batch_images`."""
    samples = metric_samples(client)
    return (samples[("neuroprint_batch_images_count", ())],
            samples[("neuroprint_batch_images_bucket", (("le", "1.0"),))])


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def raw_request(url: str, request: bytes) -> tuple[int, bytes, bytes]:
    """Send bytes over a plain socket (for headers httpx refuses to send); (status, head, body) of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


# -- 1. JSON predictions ---------------------------------------------------------------------------------------
def test_predict_json_nchw_matches_the_model(client: httpx.Client, images: torch.Tensor, expected: list[int],
                                             local_guard: Guard) -> None:
    """`[N, 1, 8, 8]` lists: the model's labels, softmax probabilities, every detector's verdict, a request id."""
    x = images[:6]
    response = client.post("/v1/predict", json={"inputs": as_lists(x)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == expected[:6]
    assert len(body["predictions"]) == 6
    thresholds = local_guard.thresholds
    for label, prediction in zip(expected, body["predictions"]):
        assert prediction["label"] == label
        probabilities = prediction["probabilities"]
        assert len(probabilities) == 10 and all(0.0 <= p <= 1.0 for p in probabilities)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert int(np.argmax(probabilities)) == label
        assert set(prediction["detectors"]) == DETECTORS
        for key, verdict in prediction["detectors"].items():
            assert set(verdict) == {"score", "threshold", "flagged"}
            assert np.isfinite(verdict["score"])
            assert verdict["threshold"] == pytest.approx(thresholds[key])
            assert verdict["flagged"] == (verdict["score"] > verdict["threshold"])
        assert prediction["flagged"] == any(v["flagged"] for v in prediction["detectors"].values())
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert response.headers["x-request-id"] == body["request_id"]
    assert predict(client, x)["request_id"] != body["request_id"]


def test_predict_json_nhw_for_one_channel(client: httpx.Client, images: torch.Tensor, expected: list[int]) -> None:
    """`[N, 8, 8]` lists (the channel left out) give the same labels."""
    response = client.post("/v1/predict", json={"inputs": images[:5, 0].tolist()})
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == expected[:5]


def test_predict_mahalanobis_scores_match_the_local_guard(client: httpx.Client, images: torch.Tensor,
                                                          local_guard: Guard) -> None:
    """The deterministic detector's scores over HTTP are the in-process ones (float32 survives the JSON trip)."""
    x = images[:4]
    served = [p["detectors"]["mahalanobis"]["score"] for p in predict(client, x)["predictions"]]
    assert served == pytest.approx(local_guard.score(x).scores["mahalanobis"].tolist(), rel=1e-4, abs=1e-4)


# -- 2. multipart uploads --------------------------------------------------------------------------------------
def test_predict_multipart_png_uploads(client: httpx.Client, images: torch.Tensor, local_guard: Guard) -> None:
    """Two PNG files in the field `files`: the labels of the decoded images and the file names, in order."""
    pngs = [image_to_png(images[i]) for i in (0, 1)]
    decoded = torch.cat([image_from_bytes(p, local_guard.image_shape) for p in pngs])
    response = client.post("/v1/predict", files=[("files", ("first.png", pngs[0], "image/png")),
                                                 ("files", ("second.png", pngs[1], "image/png"))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == local_guard.score(decoded).labels.tolist()
    assert [p["file"] for p in body["predictions"]] == ["first.png", "second.png"]
    assert [p["label"] for p in body["predictions"]] == body["labels"]
    assert response.headers["x-request-id"] == body["request_id"]


# -- 3. Open Inference Protocol through tritonclient -----------------------------------------------------------
@pytest.fixture(scope="module")
def triton_client(guard_url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=guard_url.removeprefix("http://"), network_timeout=TIMEOUT)
    yield client
    client.close()


def test_open_inference_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("guard")
    assert not triton_client.is_model_ready("not-a-model")
    metadata = triton_client.get_model_metadata("guard")
    assert metadata["name"] == "guard"
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs["label"] == ("INT64", [-1])
    assert outputs["probabilities"] == ("FP32", [-1, 10])
    assert outputs["flagged"] == ("BOOL", [-1])
    for key in DETECTORS:
        assert outputs[f"score_{key}"] == ("FP32", [-1]) and outputs[f"flagged_{key}"] == ("BOOL", [-1])
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_open_inference_infer_matches_predict(triton_client: triton.InferenceServerClient, client: httpx.Client,
                                              images: torch.Tensor, expected: list[int], binary: bool) -> None:
    """FP32 images sent as raw little-endian bytes (binary tensor extension) or JSON data: /v1/predict's labels."""
    x = images[:5].numpy().astype(np.float32)
    tensor = triton.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name) for name in ("label", "probabilities", "flagged", "score_bank")]
    result = triton_client.infer("guard", [tensor], outputs=outputs, request_id="req-17")
    labels = result.as_numpy("label")
    assert labels.tolist() == expected[:5] == predict(client, images[:5])["labels"]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-4)
    assert result.as_numpy("flagged").shape == (5,) and result.as_numpy("flagged").dtype == np.bool_
    assert result.as_numpy("score_bank").shape == (5,) and np.isfinite(result.as_numpy("score_bank")).all()
    response = result.get_response()
    assert response["model_name"] == "guard" and response["id"] == "req-17"
    assert [o["name"] for o in response["outputs"]] == ["label", "probabilities", "flagged", "score_bank"]


def test_open_inference_unknown_model_and_output(triton_client: triton.InferenceServerClient,
                                                 images: torch.Tensor) -> None:
    tensor = triton.InferInput("images", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(images[:1].numpy(), binary_data=True)
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton_client.infer("not-a-model", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton_client.get_model_metadata("not-a-model")
    with pytest.raises(InferenceServerException, match="unknown output"):
        triton_client.infer("guard", [tensor], outputs=[triton.InferRequestedOutput("logits")])


# -- 4. health, metrics, docs ----------------------------------------------------------------------------------
def test_health_docs_and_description(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["detectors"]) == DETECTORS
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    assert {"/v1/predict", "/v1/attack", "/v2/models/{name}/infer"} <= set(spec.json()["paths"])
    described = client.get("/v1/guard").json()
    assert described["image_shape"] == [1, 8, 8] and described["num_classes"] == 10
    assert described["draws"] == "secure" and {d["key"] for d in described["detectors"]} == DETECTORS


def test_metrics_count_requests_images_and_batches(client: httpx.Client, images: torch.Tensor) -> None:
    text = client.get("/metrics").text
    for name in ("neuroprint_requests_total", "neuroprint_images_total", "neuroprint_request_seconds_bucket",
                 "neuroprint_batch_images_bucket"):
        assert name in text, name
    before = metric_samples(client)[("neuroprint_images_total", ())]
    predict(client, images[:3])
    after = metric_samples(client)
    assert after[("neuroprint_images_total", ())] == before + 3
    ok = after[("neuroprint_requests_total", (("route", "/v1/predict"), ("status", "200")))]
    assert ok >= 1


# -- 5. API key ------------------------------------------------------------------------------------------------
def test_api_key_is_required_and_never_echoed(key_url: str, images: torch.Tensor, expected: list[int]) -> None:
    body = {"inputs": as_lists(images[:2])}
    answers = []
    with httpx.Client(base_url=key_url, timeout=TIMEOUT) as http:
        missing = http.post("/v1/predict", json=body)
        assert "API key" in assert_json_error(missing, 401)
        assert missing.headers.get("www-authenticate") == "Bearer"
        wrong = http.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {API_KEY}x"})
        assert_json_error(wrong, 401)
        wrong_header = http.post("/v1/predict", json=body, headers={"X-API-Key": API_KEY[:-1]})
        assert_json_error(wrong_header, 401)
        bearer = http.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
        header = http.post("/v1/predict", json=body, headers={"X-API-Key": API_KEY})
        for ok in (bearer, header):
            assert ok.status_code == 200, ok.text
            assert ok.json()["labels"] == expected[:2]
        assert_json_error(http.get("/metrics"), 401)
        assert_json_error(http.get("/v2/models/guard"), 401)
        assert http.get("/v2/models/guard", headers={"X-API-Key": API_KEY}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/v2/health/live", "/docs", "/openapi.json"):
            assert http.get(open_path).status_code == 200, open_path
        answers = [missing, wrong, wrong_header, bearer, header]
    for answer in answers:
        assert API_KEY not in answer.text
        assert all(API_KEY not in value for value in answer.headers.values())


# -- 6. the ownership HTTP client ------------------------------------------------------------------------------
def test_ownership_http_suspect_reads_the_guard(guard_url: str, images: torch.Tensor, expected: list[int]) -> None:
    suspect = HTTPSuspect(f"{guard_url}/v1/predict", batch_size=12)
    labels = suspect.labels(images)
    assert labels.dtype == torch.long and labels.tolist() == expected


def test_ownership_verify_command_against_the_served_model(guard_url: str, local_guard: Guard, digits: DataSplits,
                                                            tmp_path: Path) -> None:
    """`neuroprint ownership verify --url` sends a query set of the guard's own model to the running service: the
    served model is that model, so it answers every query as the source did and is called a surrogate."""
    queries = generate_ipguard_queries(local_guard.classifier, digits.val.x[:40], size=10, progress=False)
    queries.save(tmp_path / "queries")
    done = subprocess.run([sys.executable, "-m", "neuroprint", "ownership", "verify", "--queries",
                           str(tmp_path / "queries"), "--url", f"{guard_url}/v1/predict"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["cae_acc"] == 1.0 and verdict["is_surrogate"] and "SURROGATE" in done.stderr


# -- 7. per-request draws --------------------------------------------------------------------------------------
def test_secure_draws_differ_per_request(client: httpx.Client, images: torch.Tensor) -> None:
    """The bank checks each request with fresh fingerprints; the deterministic Mahalanobis scores do not move."""
    x = images[:8]
    first, second = predict(client, x), predict(client, x)
    assert first["labels"] == second["labels"]
    assert bank_scores(first) != bank_scores(second)
    maha = [[p["detectors"]["mahalanobis"]["score"] for p in body["predictions"]] for body in (first, second)]
    assert maha[0] == pytest.approx(maha[1], rel=1e-5)


def test_seeded_server_repeats_its_scores(seeded_url: str, images: torch.Tensor, local_guard: Guard) -> None:
    """With `--seeded`, identical requests get identical bank scores, the in-process seeded guard's."""
    x = images[:8]
    with httpx.Client(base_url=seeded_url, timeout=TIMEOUT) as http:
        assert http.get("/v1/guard").json()["draws"] == "seeded"
        first, second = predict(http, x), predict(http, x)
    assert bank_scores(first) == pytest.approx(bank_scores(second), rel=1e-6)
    assert bank_scores(first) == pytest.approx(local_guard.score(x).scores["bank"].tolist(), rel=1e-4, abs=1e-4)


# -- 8. malformed input: hand-written cases ----------------------------------------------------------------------
def _image_json(first: str) -> bytes:
    """One `[8, 8]` image as raw JSON text whose first pixel is the token `first` (e.g. NaN, which json allows)."""
    rows = [[first] + ["0.5"] * 7] + [["0.5"] * 8] * 7
    return ('{"inputs": [[' + ",".join("[" + ",".join(r) + "]" for r in rows) + "]]}").encode()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


IMAGE = [[[0.5] * 8 for _ in range(8)]]
TENSOR = {"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}
JSON = {"content-type": "application/json"}
HEADER = json.dumps({"inputs": [{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                 "parameters": {"binary_data_size": 256}}]}).encode()
PIXELS = np.full(64, 0.5, "<f4").tobytes()


def _binary(header_length: str | bytes, pixels: bytes = PIXELS, header: bytes = HEADER) -> dict[str, Any]:
    return {"content": header + pixels, "headers": {"inference-header-content-length": header_length,
                                                    "content-type": "application/octet-stream"}}



# (method, path, httpx keyword arguments, the exact status expected or None for any 4xx)
CASES: list[Any] = [
    # /v1/predict, JSON
    pytest.param("POST", "/v1/predict", {"content": b"{not json", "headers": JSON}, 400, id="body-not-json"),
    pytest.param("POST", "/v1/predict", {"content": b"", "headers": JSON}, 400, id="empty-body"),
    pytest.param("POST", "/v1/predict", {"content": b'{"inputs": "\xff"}', "headers": JSON}, 400, id="not-utf8"),
    pytest.param("POST", "/v1/predict", {"json": [IMAGE]}, 422, id="json-array-not-object"),
    pytest.param("POST", "/v1/predict", {"json": "inputs"}, 422, id="json-string-not-object"),
    pytest.param("POST", "/v1/predict", {"json": {"images": [IMAGE]}}, 422, id="missing-inputs"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": 3}}, 422, id="inputs-not-list"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": {"0": IMAGE}}}, 422, id="inputs-dict"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[0.1, 0.2], [0.3]]]}}, 400, id="ragged"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [IMAGE[0], 0.5]}}, 400, id="mixed-depth"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[["a"] * 8] * 8]}}, 400, id="strings"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[{"p": 1}] * 8] * 8]}}, 400, id="objects"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[None] * 8] * 8]}}, 400, id="nulls"),
    pytest.param("POST", "/v1/predict", {"content": _image_json("NaN"), "headers": JSON}, 400, id="nan"),
    pytest.param("POST", "/v1/predict", {"content": _image_json("Infinity"), "headers": JSON}, 400, id="infinity"),
    pytest.param("POST", "/v1/predict", {"content": _image_json("-Infinity"), "headers": JSON}, 400, id="-infinity"),
    pytest.param("POST", "/v1/predict", {"content": _image_json("1e999"), "headers": JSON}, 400, id="1e999"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[-0.01] * 8] * 8]}}, 400, id="pixels-below-0"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[1.01] * 8] * 8]}}, 400, id="pixels-above-1"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[255] * 8] * 8]}}, 400, id="pixels-0-255"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[0.5] * 7] * 8]}}, 400, id="shape-8x7"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[[0.5] * 8] * 8] * 3]}}, 400, id="three-channels"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [0.5] * 64}}, 400, id="flat-pixels"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[[[0.5]]]]]}}, 400, id="five-dims"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": []}}, 400, id="zero-images"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[]]}}, 400, id="empty-image"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[0] * 8] * 8] * 257}}, 400, id="257-images"),
    pytest.param("POST", "/v1/predict", {"content": b'{"inputs": ' + _nested(500) + b"}", "headers": JSON}, 400,
                 id="nested-500"),
    pytest.param("POST", "/v1/predict", {"content": b'{"inputs": ' + _nested(5000) + b"}", "headers": JSON}, 400,
                 id="nested-5000"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[10**400] * 8] * 8]}}, 400, id="int-10e400"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[-(10**400)] * 8] * 8]}}, 400, id="int--10e400"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[["0.5"] * 8] * 8]}}, 400, id="numeric-strings"),
    pytest.param("POST", "/v1/predict", {"json": {"inputs": [[[True] * 8] * 8]}}, 400, id="booleans"),
    pytest.param("POST", "/v1/predict", {"content": b'{"inputs": []}', "headers": {"content-type": "text/plain"}},
                 415, id="text-plain"),
    pytest.param("POST", "/v1/predict", {"data": {"inputs": "0.5"}}, 415, id="form-urlencoded"),
    pytest.param("POST", "/v1/predict", {"content": b" " * (9 * 1024 * 1024), "headers": JSON}, 413,
                 id="body-9MiB"),
    # /v1/predict, multipart
    pytest.param("POST", "/v1/predict", {"files": {"files": ("notes.txt", b"not an image", "text/plain")}}, 400,
                 id="upload-not-image"),
    pytest.param("POST", "/v1/predict", {"files": {"files": ("empty.png", b"", "image/png")}}, 400,
                 id="upload-empty-file"),
    pytest.param("POST", "/v1/predict", {"files": {"files": ("cut.png", png_bytes(Image.new("L", (8, 8)))[:40],
                                                             "image/png")}}, 400, id="upload-truncated-png"),
    pytest.param("POST", "/v1/predict", {"content": b"--b--\r\n",
                                         "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400,
                 id="empty-multipart"),
    pytest.param("POST", "/v1/predict", {"content": b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'
                                                    b"--b--\r\n",
                                         "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400,
                 id="multipart-without-files"),
    pytest.param("POST", "/v1/predict", {"content": b"--b\r\nxx\r\n\r\nyy",
                                         "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400,
                 id="garbage-multipart"),
    pytest.param("POST", "/v1/predict", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},
                 400, id="multipart-no-boundary"),
    pytest.param("POST", "/v1/predict", {"files": [("files", (f"{i}.png", png_bytes(Image.new("L", (8, 8))),
                                                               "image/png")) for i in range(257)]}, 400,
                 id="upload-257-files"),
    pytest.param("POST", "/v1/predict", {"files": {"files": ("big.bin", b"x" * (9 * 1024 * 1024),
                                                             "image/png")}}, 413, id="upload-9MiB"),
    # wrong methods and paths
    pytest.param("GET", "/v1/predict", {}, 405, id="get-predict"),
    pytest.param("GET", "/v1/attack", {}, 405, id="get-attack"),
    pytest.param("GET", INFER, {}, 405, id="get-infer"),
    pytest.param("POST", "/healthz", {}, 405, id="post-healthz"),
    pytest.param("DELETE", "/v1/predict", {}, 405, id="delete-predict"),
    pytest.param("GET", "/nope", {}, 404, id="unknown-path"),
    pytest.param("POST", "/v1/nope", {"json": {}}, 404, id="unknown-v1-path"),
    pytest.param("GET", "/v2/models/guard/versions/1/nope", {}, 404, id="unknown-v2-path"),
    # Open Inference Protocol
    pytest.param("POST", "/v2/models/nope/infer", {"json": {"inputs": [TENSOR]}}, 404, id="v2-unknown-model"),
    pytest.param("GET", "/v2/models/nope", {}, 404, id="v2-unknown-model-metadata"),
    pytest.param("POST", INFER, {"content": b"{", "headers": JSON}, 400, id="v2-not-json"),
    pytest.param("POST", INFER, {"json": {}}, 400, id="v2-no-inputs"),
    pytest.param("POST", INFER, {"json": {"inputs": [TENSOR, TENSOR]}}, 400, id="v2-two-inputs"),
    pytest.param("POST", INFER, {"json": {"inputs": [1]}}, 400, id="v2-input-not-object"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "name": "pixels"}]}}, 400, id="v2-tensor-name"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "datatype": "INT8"}]}}, 400, id="v2-datatype"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "datatype": ["FP32"]}]}}, 400,
                 id="v2-datatype-list"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "shape": [1, 8, 8]}]}}, 400, id="v2-shape-3d"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "shape": [1, 1, 8, 7]}]}}, 400, id="v2-shape-8x7"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "shape": [0, 1, 8, 8], "data": []}]}}, 400,
                 id="v2-shape-zero"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "shape": [2, 1, 8, 8]}]}}, 400,
                 id="v2-shape-data-mismatch"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "shape": [2**58 + 1, 1, 8, 8]}]}}, 400,
                 id="v2-shape-overflow"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "data": None}]}}, 400, id="v2-no-data"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "data": ["a"] * 64}]}}, 400, id="v2-data-strings"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "data": [[0.5] * 32, [0.5] * 31]}]}}, 400,
                 id="v2-data-ragged"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "data": [2.0] * 64}]}}, 400, id="v2-pixels-2"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "data": [10**400] * 64}]}}, 400,
                 id="v2-data-int-10e400"),
    pytest.param("POST", INFER, {"json": {"inputs": [{**TENSOR, "datatype": "UINT8", "data": [300] * 64}]}}, 400,
                 id="v2-uint8-300"),
    pytest.param("POST", INFER, {"json": {"inputs": [TENSOR], "id": 7}}, 400, id="v2-id-not-string"),
    pytest.param("POST", INFER, {"json": {"inputs": [TENSOR], "outputs": "label"}}, 400, id="v2-outputs-not-list"),
    pytest.param("POST", INFER, {"json": {"inputs": [TENSOR], "outputs": [{"name": "logits"}]}}, 400,
                 id="v2-unknown-output"),
    pytest.param("POST", INFER, {"content": _nested(5000), "headers": JSON}, 400, id="v2-nested-5000"),
    pytest.param("POST", INFER, _binary(str(len(HEADER)), PIXELS[:-4]), 400, id="v2-binary-short"),
    pytest.param("POST", INFER, _binary(str(len(HEADER)), PIXELS + PIXELS), 400, id="v2-binary-long"),
    pytest.param("POST", INFER, _binary(str(len(HEADER)), np.full(64, np.nan, "<f4").tobytes()), 400,
                 id="v2-binary-nan"),
    pytest.param("POST", INFER, _binary(str(len(HEADER) + 2), header=HEADER.replace(b"256", b'"256"')), 400,
                 id="v2-binary-size-string"),
    pytest.param("POST", INFER, _binary("abc"), 400, id="v2-header-length-abc"),
    pytest.param("POST", INFER, _binary("-1"), 400, id="v2-header-length-negative"),
    pytest.param("POST", INFER, _binary("99999"), 400, id="v2-header-length-past-body"),
    pytest.param("POST", INFER, _binary(str(len(HEADER) - 3)), 400, id="v2-header-length-short"),
    pytest.param("POST", INFER, _binary(""), 400, id="v2-header-length-empty"),
    pytest.param("POST", INFER, _binary(b"\xb2"), 400, id="v2-header-length-superscript"),
    pytest.param("POST", INFER, {"content": HEADER + PIXELS}, 400, id="v2-binary-without-header-length"),
    # /v1/attack
    pytest.param("POST", "/v1/attack", {"json": {"input": IMAGE, "eps": 0}}, 422, id="attack-eps-0"),
    pytest.param("POST", "/v1/attack", {"json": {"input": IMAGE, "eps": -0.1}}, 422, id="attack-eps-negative"),
    pytest.param("POST", "/v1/attack", {"json": {"input": IMAGE, "eps": 2}}, 422, id="attack-eps-2"),
    pytest.param("POST", "/v1/attack", {"json": {"input": IMAGE, "eps": 0.9}}, 400, id="attack-eps-over-max"),
    pytest.param("POST", "/v1/attack", {"json": {"input": IMAGE, "eps": "big"}}, 422, id="attack-eps-string"),
    pytest.param("POST", "/v1/attack", {"content": b'{"input": [[[0.5]]], "eps": NaN}', "headers": JSON}, None,
                 id="attack-eps-nan"),
    pytest.param("POST", "/v1/attack", {"json": {"eps": 0.1}}, 422, id="attack-no-input"),
    pytest.param("POST", "/v1/attack", {"json": {"input": [[1, 2]], "eps": 0.1}}, 400, id="attack-bad-shape"),
    pytest.param("POST", "/v1/attack", {"json": {"input": [IMAGE, IMAGE], "eps": 0.1}}, 400, id="attack-two"),
    pytest.param("POST", "/v1/attack", {"json": {"input": [[[1.5] * 8] * 8], "eps": 0.1}}, 400,
                 id="attack-pixels-1.5"),
    pytest.param("POST", "/v1/attack", {"content": b"[", "headers": JSON}, 400, id="attack-not-json"),
    pytest.param("POST", "/v1/attack", {"content": b'{"input": ' + _nested(5000) + b"}", "headers": JSON}, 400,
                 id="attack-nested-5000"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), CASES)
def test_malformed_request_is_a_json_client_error(guard_url: str, method: str, path: str, kwargs: dict[str, Any],
                                                  status: int | None) -> None:
    """Each case on a fresh connection (a 5xx must not take the next case's connection down with it)."""
    response = httpx.request(method, f"{guard_url}{path}", timeout=TIMEOUT, **kwargs)
    assert_json_error(response, status)


def _chunks(total: int, prefix: bytes = b"", block: int = 1 << 20) -> Iterator[bytes]:
    """`prefix`, then `total` bytes in blocks: a streamed body (httpx sends an iterator chunked)."""
    yield prefix
    for start in range(0, total, block):
        yield b" " * min(block, total - start)


UPLOAD_HEAD = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'


@pytest.mark.parametrize(("path", "content_type", "prefix"),
                         [("/v1/predict", "application/json", b""),
                          ("/v1/predict", "multipart/form-data; boundary=b", UPLOAD_HEAD),
                          (INFER, "application/json", b""),
                          ("/v1/attack", "application/json", b"")], ids=["predict", "upload", "infer", "attack"])
def test_chunked_body_over_the_limit_is_413(guard_url: str, path: str, content_type: str, prefix: bytes) -> None:
    """Streamed (chunked) bodies have no Content-Length to check up front: the limit must still answer 413."""
    response = httpx.post(f"{guard_url}{path}", content=_chunks(9 * 1024 * 1024, prefix), timeout=TIMEOUT,
                          headers={"content-type": content_type})
    assert_json_error(response, 413)


def test_oversized_upload_names_the_size_limit(guard_url: str) -> None:
    wide = png_bytes(Image.new("L", (5000, 1)))
    response = httpx.post(f"{guard_url}/v1/predict", files={"files": ("wide.png", wide, "image/png")},
                          timeout=TIMEOUT)
    assert "4096" in assert_json_error(response, 400)


@pytest.mark.parametrize(("content_length", "status"), [("abc", 400), ("-1", 400), ("1e3", 400), ("+2", 400),
                                                        ("99999999999", 413), ("1", 400)])
def test_bad_content_length_header(guard_url: str, content_length: str, status: int) -> None:
    """Content-Length values httpx refuses to send. Non-numbers are refused by uvicorn's HTTP parser (a plain-text
    400, before the app); a huge one gets the app's JSON 413, a short one truncates the JSON (400)."""
    request = (f"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
               f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n{{}}").encode()
    code, head, body = raw_request(guard_url, request)
    assert code == status, (head, body)
    if b"application/json" in head:
        message = json.loads(body)["error"]
        assert "\n" not in message


def test_valid_attack_stays_within_its_budget(client: httpx.Client, images: torch.Tensor) -> None:
    """The web page's attack button: PGD within eps of the image, pixels in [0, 1], both verdicts."""
    response = client.post("/v1/attack", json={"input": images[0].tolist(), "eps": 0.2})
    assert response.status_code == 200, response.text
    body = response.json()
    attacked = torch.tensor(body["image"])
    assert attacked.shape == (1, 8, 8) and 0.0 <= attacked.min() and attacked.max() <= 1.0
    assert (attacked - images[0]).abs().max() <= 0.2 + 1e-5
    for verdict in (body["original"], body["attacked"]):
        assert set(verdict["detectors"]) == DETECTORS


def test_openapi_refs_resolve(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    refs = re.findall(r'"\$ref":\s*"([^"]+)"', json.dumps(spec))
    assert refs
    for ref in refs:
        node: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, ref
            node = node[part]


# -- 8. malformed input: property-based --------------------------------------------------------------------------
def _lookup(ref: str, roots: tuple[dict[str, Any], ...]) -> Any:
    for root in roots:
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    raise KeyError(ref)


def _resolve(node: Any, roots: tuple[dict[str, Any], ...]) -> Any:
    """`node` with every `$ref` inlined (looked up in the schema itself, then the OpenAPI document)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(_lookup(node["$ref"], roots), roots)
        return {key: _resolve(value, roots) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_resolve(value, roots) for value in node]
    return node


@pytest.fixture(scope="module")
def json_bodies(client: httpx.Client) -> list[tuple[str, dict[str, Any]]]:
    """(path, resolved JSON schema) of every POST operation's application/json request body, from the live server."""
    spec = client.get("/openapi.json").json()
    bodies = []
    for path, item in spec["paths"].items():
        schema = item.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {})
        if "schema" in schema:
            bodies.append((path.replace("{name}", "guard"), _resolve(schema["schema"], (schema["schema"], spec))))
    assert {path for path, _ in bodies} == {"/v1/predict", "/v1/attack", INFER}
    return bodies


def schema_strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Instances of a resolved JSON schema: `hypothesis_jsonschema.from_schema` for everything but objects, which
    are built here from their properties (hypothesis-jsonschema 0.23.1 cannot draw objects with this Hypothesis:
    its object strategy calls the removed private `many.more()` and raises AttributeError)."""
    if "anyOf" in schema:
        return st.one_of([schema_strategy(option) for option in schema["anyOf"]])
    if schema.get("type") == "object":
        properties = {key: schema_strategy(value) for key, value in schema.get("properties", {}).items()}
        if not properties:
            return st.dictionaries(st.text(max_size=8), from_schema({}), max_size=3)
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries({k: v for k, v in properties.items() if k in required},
                                     optional={k: v for k, v in properties.items() if k not in required})
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return st.lists(schema_strategy(schema["items"]), max_size=4)
    return from_schema(schema)


FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=40)
KEYS = st.sampled_from(["inputs", "input", "eps", "id", "outputs", "name", "shape", "datatype", "data"])
# Arbitrary JSON, and objects with the routes' field names holding arbitrary JSON.
BODIES = ANY_JSON | st.dictionaries(KEYS, ANY_JSON, max_size=4)
PIXEL = st.floats(0, 1) | st.integers(0, 1)


def _spoiled(pixels: list[Any], where: int, value: Any, spoil: bool) -> list[Any]:
    return [value if spoil and i == where else p for i, p in enumerate(pixels)]


# 64 valid pixels, one of which is replaced by an arbitrary scalar half of the time.
PIXELS64 = st.builds(_spoiled, st.lists(PIXEL, min_size=64, max_size=64), st.integers(0, 63), SCALARS, st.booleans())
GRID = PIXELS64.map(lambda p: [p[row * 8 : row * 8 + 8] for row in range(8)])  # [8, 8]
DATATYPE = st.sampled_from(["FP32", "FP64", "FP16", "UINT8"])
TENSOR_BODY = st.fixed_dictionaries(
    {"name": st.just("images"), "shape": st.just([1, 1, 8, 8]) | st.just([1, 1, 8, 8]) | ANY_JSON,
     "datatype": st.one_of(DATATYPE, DATATYPE, DATATYPE, SCALARS), "data": PIXELS64 | PIXELS64 | ANY_JSON},
    optional={"parameters": st.fixed_dictionaries({"binary_data_size": SCALARS}) | ANY_JSON})
# Per route, bodies of the right outline with arbitrary contents, to get past the first checks: 8x8 grids of
# arbitrary scalars; one infer tensor named "images" (datatype only scalar: a list or object there is the known
# 500 of the `v2-datatype-list` case).
SHAPED_BODIES: dict[str, st.SearchStrategy[Any]] = {
    "/v1/predict": st.fixed_dictionaries({"inputs": st.lists(GRID | ANY_JSON, min_size=1, max_size=3)}),
    "/v1/attack": st.fixed_dictionaries({"input": GRID | ANY_JSON}, optional={"eps": SCALARS | st.floats(0, 1)}),
    INFER: st.fixed_dictionaries({"inputs": st.tuples(TENSOR_BODY).map(list)},
                                 optional={"id": ANY_JSON, "outputs": ANY_JSON}),
}


def _fuzz(http: httpx.Client, path: str, bodies: st.SearchStrategy[Any]) -> None:
    """Post `FUZZ`-many bodies drawn from `bodies` to `path`: none may get a 5xx; errors are one-line JSON."""

    @FUZZ
    @given(body=bodies)
    def check(body: Any) -> None:
        response = http.post(path, content=json.dumps(body, allow_nan=True).encode(), headers=JSON)
        assert response.status_code < 500, (f"{path} {json.dumps(body, allow_nan=True)[:300]} -> "
                                            f"{response.status_code} {response.text[:200]}")
        if response.status_code >= 400:
            assert_json_error(response)

    check()


def test_schema_instances_never_cause_5xx(guard_url: str, json_bodies: list[tuple[str, dict[str, Any]]]) -> None:
    """Bodies generated from each POST operation's own request schema (hypothesis-jsonschema)."""
    with httpx.Client(base_url=guard_url, timeout=TIMEOUT) as http:
        for path, schema in json_bodies:
            _fuzz(http, path, schema_strategy(schema))
        assert http.get("/healthz").status_code == 200


def test_arbitrary_json_never_causes_5xx(guard_url: str, json_bodies: list[tuple[str, dict[str, Any]]]) -> None:
    """Arbitrary JSON (NaN and infinities included) on every POST operation, free-form and route-shaped."""
    with httpx.Client(base_url=guard_url, timeout=TIMEOUT) as http:
        for path, _ in json_bodies:
            _fuzz(http, path, BODIES)
            _fuzz(http, path, SHAPED_BODIES[path])
        assert http.get("/healthz").status_code == 200


# -- 9. concurrency ------------------------------------------------------------------------------------------
def _simultaneous_predictions(url: str, images: torch.Tensor) -> list[list[int]]:
    """One request per image, all released at once by a barrier; each request's labels."""
    barrier = threading.Barrier(len(images))

    def one(i: int) -> list[int]:
        barrier.wait()
        response = httpx.post(f"{url}/v1/predict", json={"inputs": [images[i].tolist()]}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["labels"]

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, range(len(images))))


def test_concurrent_requests_are_micro_batched(client: httpx.Client, guard_url: str, images: torch.Tensor,
                                               expected: list[int]) -> None:
    """32 simultaneous one-image requests all answer correctly; at least one micro-batch holds several of them
    (tried over up to 3 rounds, as thread scheduling on 2 cores may serialise a round)."""
    batched = 0.0
    for _ in range(3):
        count, singles = batch_histogram(client)
        assert _simultaneous_predictions(guard_url, images) == [[label] for label in expected]
        new_count, new_singles = batch_histogram(client)
        assert 1 <= new_count - count <= 32
        batched = (new_count - count) - (new_singles - singles)
        if batched > 0:
            break
    assert batched > 0, "no micro-batch held more than one request in 3 rounds of 32 concurrent requests"


# -- the server survived everything above ------------------------------------------------------------------------
def test_server_survives_the_suite(client: httpx.Client, images: torch.Tensor, expected: list[int]) -> None:
    assert client.get("/healthz").status_code == 200
    assert predict(client, images[:3])["labels"] == expected[:3]
