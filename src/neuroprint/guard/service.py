"""The guard service: FastAPI routes that classify *and* flag every image, a web page, health and metrics.

Routes (JSON errors are `{"error": "one line"}`; client mistakes are 4xx, never 5xx):
- `POST /v1/predict`: `{"inputs": [N images [C, H, W] in [0, 1]]}` or multipart image uploads (field `files`) ->
  `{"labels": [...], "predictions": [{label, probabilities, detectors: {key: {score, threshold, flagged}},
  flagged}], "request_id"}` (the `labels` field is what `neuroprint ownership verify --url` reads).
- `POST /v1/attack`: `{"input": one image [C, H, W], "eps": 0.3}` -> PGD on the server (untargeted, away from
  the current label) and both verdicts; the web page's "attack" button.
- `GET /v1/guard`: model, image shape, detectors and thresholds. `GET /`: the web page.
- Open Inference Protocol (`openinference`): `GET /v2`, `/v2/health/live`, `/v2/health/ready`,
  `/v2/models/{name}`, `/v2/models/{name}/ready`, `POST /v2/models/{name}/infer`.
- `GET /healthz`, `/readyz`, `/metrics` (Prometheus), `/docs` (OpenAPI).

Every request to a randomized detector draws fresh fingerprints from the OS CSPRNG (guard draws "secure"); the
service never returns fingerprints, draws or keys, and logs no image data.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

import neuroprint
from neuroprint.attacks import make_attack
from neuroprint.errors import InputError, NeuroprintError
from neuroprint.guard import openinference
from neuroprint.guard.batcher import MicroBatcher
from neuroprint.guard.guard import Guard, GuardScores
from neuroprint.guard.heap import HeapTrimmer
from neuroprint.guard.inputs import image_from_bytes, images_from_lists
from neuroprint.guard.limits import APIKey, BodyLimit, PayloadTooLarge
from neuroprint.guard.schemas import AttackRequest, InferRequest, PredictRequest, body_doc
from neuroprint.guard.telemetry import RequestMetrics, ServiceMetrics

T = TypeVar("T")
OPEN_PATHS = ("/", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json")


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and options: `max_body_bytes` per request, `max_images` per request, micro-batches of at most
    `max_batch` images gathered for at most `max_wait_ms` and scored by `workers` model threads at a time,
    `timeout_s` for a request's scoring, `top_k`
    probabilities per image (None = all), the Open Inference `model_name`, an optional `api_key`, and whether
    the web page's server-side attack (`/v1/attack`, PGD of `attack_steps` steps, eps <= `max_attack_eps`) is on."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_images: int = 256
    max_batch: int = 64
    workers: int = 2
    max_wait_ms: float = 5.0
    timeout_s: float = 30.0
    top_k: int | None = None
    model_name: str = "guard"
    api_key: str | None = None
    attack: bool = True
    attack_steps: int = 40
    max_attack_eps: float = 0.5


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _json(value: Any) -> bytes:
    """A response body: `value` as compact UTF-8 JSON (what `JSONResponse` sends, rendered where it is called)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InputError("the body is not valid JSON") from None


class ServiceBusy(Exception):
    """Scoring did not finish within the request timeout (answered 503)."""


def create_app(guard: Guard, settings: ServiceSettings | None = None) -> FastAPI:
    """The FastAPI application serving `guard` (see the module doc)."""
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()
    trim_heap = HeapTrimmer()

    def score_batch(x: torch.Tensor) -> GuardScores:
        scores = guard.score(x)
        trim_heap()  # in the model thread: the event loop never waits for it
        return scores

    batcher = MicroBatcher(score_batch, settings.max_batch, settings.max_wait_ms, metrics.observe_batch,
                           settings.workers)
    keys = list(guard.detectors)
    thresholds = guard.thresholds

    def verdict(scores: GuardScores) -> dict[str, Any]:
        """One image's verdict as the web page shows it."""
        return scores.records(thresholds, settings.top_k)[0]

    description = {"model": guard.meta.get("model", {}).get("architecture"), "model_name": settings.model_name,
                   "image_shape": list(guard.image_shape), "num_classes": guard.num_classes,
                   "detectors": [{"key": k, "threshold": t} for k, t in thresholds.items()],
                   "fpr": guard.meta.get("fpr"), "draws": guard.draws, "attack": settings.attack}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="neuroprint guard", version=neuroprint.__version__, lifespan=lifespan,
                  description="Classifies images and flags adversarial ones with calibrated detectors.")

    async def score(x: torch.Tensor, respond: Callable[[GuardScores], T]) -> T:
        """`respond(verdict)` for images `x` (already checked by the parser that made them), run in the model
        thread once `x` has been scored as part of a micro-batch."""
        if len(x) > settings.max_images:
            raise InputError(f"{len(x)} images in one request; the limit is {settings.max_images}")

        def finish(scores: GuardScores) -> T:
            metrics.observe_verdicts(scores)
            return respond(scores)

        try:
            return await asyncio.wait_for(batcher.submit(x, finish), settings.timeout_s)
        except TimeoutError:
            raise ServiceBusy(f"scoring took longer than {settings.timeout_s} s; retry later") from None

    @app.exception_handler(NeuroprintError)
    async def bad_input(_: Request, exc: NeuroprintError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(PayloadTooLarge)
    async def too_large(_: Request, exc: PayloadTooLarge) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(ServiceBusy)
    async def busy(_: Request, exc: ServiceBusy) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
            what = "no route" if exc.status_code == 404 else "method not allowed:"
            return _error(exc.status_code, f"{what} {request.method} {request.url.path[:80]}; see /docs for the API")
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ValidationError)
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: ValidationError | RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("neuroprint.guard").joinpath("page.html").read_text())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        return {"status": "ready", "detectors": keys}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/guard")
    async def describe() -> dict[str, Any]:
        return description

    @app.post("/v1/predict", openapi_extra=body_doc(PredictRequest, multipart=True))
    async def predict(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            x, names = await _uploads(request, guard.image_shape, settings.max_images)
        elif content_type in ("application/json", ""):
            body = PredictRequest.model_validate(_json_body(await request.body()))
            x, names = images_from_lists(body.inputs, guard.image_shape), None
        else:
            return _error(415, f"content type {content_type!r} is not accepted; send application/json or "
                               f"multipart/form-data")
        request_id = uuid.uuid4().hex

        def respond(scores: GuardScores) -> bytes:
            predictions = scores.records(thresholds, settings.top_k)
            for record, name in zip(predictions, names or []):
                record["file"] = name
            return _json({"labels": scores.labels.tolist(), "predictions": predictions, "request_id": request_id})

        return Response(await score(x, respond), media_type="application/json", headers={"x-request-id": request_id})

    @app.post("/v1/attack", openapi_extra=body_doc(AttackRequest))
    async def attack(request: Request) -> Any:
        if not settings.attack:
            return _error(404, "the server-side attack is switched off (serve without --no-attack to use it)")
        body = AttackRequest.model_validate(_json_body(await request.body()))
        if body.eps > settings.max_attack_eps:
            raise InputError(f"eps must be in (0, {settings.max_attack_eps}], got {body.eps}")
        x = images_from_lists([body.input], guard.image_shape)
        original = await score(x, verdict)
        pgd = make_attack(f"pgd:eps={body.eps},steps={settings.attack_steps},alpha={2.5 * body.eps / settings.attack_steps}")
        result = await batcher.run_in_worker(lambda: pgd(guard.classifier, x, torch.tensor([original["label"]])))
        return {"original": original, "attacked": await score(result.x_adv, verdict),
                "image": result.x_adv[0].tolist(), "eps": body.eps, "steps": settings.attack_steps}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "neuroprint", "version": neuroprint.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    def known(name: str) -> None:
        if name != settings.model_name:
            raise StarletteHTTPException(404, f"unknown model {name[:60]!r}; this server serves {settings.model_name!r}")

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        known(name)
        return openinference.model_metadata(name, guard.image_shape, guard.num_classes, keys)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> dict[str, Any]:
        known(name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", openapi_extra=body_doc(InferRequest))
    async def infer(name: str, request: Request) -> Response:
        known(name)
        x, request_id, requested = openinference.parse_infer_request(
            await request.body(), request.headers.get("inference-header-content-length"), guard.image_shape)
        valid = openinference.output_names(keys)
        unknown = [n for n in requested or [] if n not in valid]
        if unknown:
            raise InputError(f"unknown output(s) {unknown}; valid: {', '.join(valid)}")
        body = await score(x, lambda scores: _json(openinference.infer_response(name, request_id, scores, requested)))
        return Response(body, media_type="application/json")

    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.api_key:
        app.add_middleware(APIKey, key=settings.api_key, open_paths=OPEN_PATHS)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # outermost: before anything reads the body
    return app


async def _uploads(request: Request, image_shape: tuple[int, int, int], max_images: int) -> tuple[torch.Tensor, list[str]]:
    """Images uploaded as multipart files -> `[N, C, H, W]` and their file names."""
    try:
        form = await request.form(max_files=max_images, max_fields=max_images)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001  (python-multipart raises several types on malformed bodies)
        raise InputError(f"malformed multipart body ({str(exc).splitlines()[0][:120]})") from None
    uploads = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
    if not uploads:
        raise InputError("the multipart body holds no files; send images in the field 'files'")
    images, names = [], []
    for _, upload in uploads:
        name = upload.filename or "upload"
        images.append(image_from_bytes(await upload.read(), image_shape, name))
        names.append(name)
    return torch.cat(images), names
