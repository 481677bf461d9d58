"""The Open Inference Protocol (KServe v2; spoken by Triton, MLServer and KServe): request parsing and response
encoding for a guard, as pure functions over bytes and dicts.

Request: `{"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}]}`, either as JSON or
with the binary tensor extension (a JSON header of `Inference-Header-Content-Length` bytes followed by raw
little-endian tensors, each input's `parameters.binary_data_size` long). One input tensor of images
`[N, C, H, W]` (FP32, FP64 or FP16 pixels in [0, 1], or UINT8 0..255).

Response outputs: `label` (INT64 `[N]`), `probabilities` (FP32 `[N, K]`), `flagged` (BOOL `[N]`, any detector),
and per detector `score_<key>` (FP32 `[N]`, higher = more adversarial) and `flagged_<key>` (BOOL `[N]`).
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from neuroprint.errors import InputError
from neuroprint.guard.guard import GuardScores
from neuroprint.guard.inputs import images_from_array

INPUT_NAME = "images"
DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2"),
                                       "UINT8": np.dtype("u1")}


def output_names(detector_keys: list[str]) -> list[str]:
    """The output tensors a guard's infer answers with."""
    return ["label", "probabilities", "flagged"] + [f"{kind}_{key}" for key in detector_keys for kind in ("score", "flagged")]


def model_metadata(name: str, image_shape: tuple[int, int, int], num_classes: int, detector_keys: list[str]) -> dict[str, Any]:
    """`GET /v2/models/{name}`: the model's inputs and outputs with datatypes and shapes (-1 = any batch size)."""
    outputs = [{"name": "label", "datatype": "INT64", "shape": [-1]},
               {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]},
               {"name": "flagged", "datatype": "BOOL", "shape": [-1]}]
    for key in detector_keys:
        outputs += [{"name": f"score_{key}", "datatype": "FP32", "shape": [-1]},
                    {"name": f"flagged_{key}", "datatype": "BOOL", "shape": [-1]}]
    return {"name": name, "versions": ["1"], "platform": "neuroprint_guard",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *image_shape]}], "outputs": outputs}


def parse_infer_request(body: bytes, header_length: str | None,
                        image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, str | None, list[str] | None]:
    """Images `[N, C, H, W]`, the request id and the requested output names (None = all) of an infer request."""
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise InputError(f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the "
                             f"{len(body)}-byte body")
        header, binary = body[: int(header_length)], body[int(header_length):]
    else:
        header, binary = body, b""
    try:
        request = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InputError("the infer request is not valid JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or len(request["inputs"]) != 1:
        raise InputError(f'the infer request must be {{"inputs": [one tensor named {INPUT_NAME!r}]}}')
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict):
        raise InputError("each input must be an object with name, shape, datatype and data")
    images = _input_tensor(tensor, binary, image_shape)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"id must be a string, got {type(request_id).__name__}")
    outputs = request.get("outputs")
    if outputs is None:
        return images, request_id, None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise InputError('outputs must be a list of {"name": ...} objects')
    return images, request_id, [o["name"] for o in outputs]


def _input_tensor(tensor: dict[str, Any], binary: bytes, image_shape: tuple[int, int, int]) -> torch.Tensor:
    if tensor.get("name") != INPUT_NAME:
        raise InputError(f"the input tensor must be named {INPUT_NAME!r}, got {str(tensor.get('name'))[:40]!r}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InputError(f"datatype must be one of {', '.join(DATATYPES)}; got {str(datatype)[:20]!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape)
            or tuple(shape[1:]) != tuple(image_shape)):
        raise InputError(f"shape must be [N, {', '.join(map(str, image_shape))}], got {str(shape)[:60]}")
    dtype = DATATYPES[datatype]
    size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(tensor.get("parameters"), dict) else None
    if size is not None:
        if not isinstance(size, int) or size != len(binary) or size != math.prod(shape) * dtype.itemsize:
            raise InputError(f"binary_data_size {size!r} does not match {len(binary)} bytes sent or shape {shape}")
        array = np.frombuffer(binary, dtype=dtype).copy()
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InputError("the input tensor needs data (a flat or nested list) or binary data")
        try:
            array = np.asarray(data)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise InputError(f"data must be numbers of datatype {datatype}") from None
        if array.dtype.kind not in ("iu" if datatype == "UINT8" else "iuf"):
            raise InputError(f"data must be numbers of datatype {datatype} (not strings, booleans or nulls)")
        with np.errstate(over="ignore"):
            array = array.astype(dtype if datatype != "UINT8" else np.int64)
        if array.size != math.prod(shape):
            raise InputError(f"data holds {array.size} values, shape {shape} needs {math.prod(shape)}")
    if datatype == "UINT8":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError("UINT8 data must lie in 0..255")
        array = array.astype(np.float32) / 255.0
    return images_from_array(array.astype(np.float32, copy=False), image_shape)


def infer_response(model_name: str, request_id: str | None, scores: GuardScores,
                   requested: list[str] | None) -> dict[str, Any]:
    """The infer response's JSON: the requested output tensors (all when `requested` is None)."""
    n = len(scores)
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {
        "label": ("INT64", [n], scores.labels.tolist()),
        "probabilities": ("FP32", list(scores.probabilities.shape), scores.probabilities.flatten().tolist()),
        "flagged": ("BOOL", [n], scores.flagged.tolist()),
    }
    for key in scores.scores:
        tensors[f"score_{key}"] = ("FP32", [n], scores.scores[key].tolist())
        tensors[f"flagged_{key}"] = ("BOOL", [n], scores.flags[key].tolist())
    names = list(tensors) if requested is None else requested
    unknown = [name for name in names if name not in tensors]
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; valid: {', '.join(tensors)}")
    response: dict[str, Any] = {"model_name": model_name, "model_version": "1",
                                "outputs": [{"name": name, "datatype": tensors[name][0], "shape": tensors[name][1],
                                             "data": tensors[name][2]} for name in names]}
    if request_id is not None:
        response["id"] = request_id
    return response
