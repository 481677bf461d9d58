"""The guard service's JSON request bodies (pydantic) and their OpenAPI request documentation.

The routes read their bodies themselves (so a malformed body is a one-line 4xx, and `/v1/predict` can also take
multipart uploads); `body_doc` puts each body's schema into the OpenAPI document all the same.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    """JSON body of `POST /v1/predict`."""

    inputs: list[Any] = Field(description="N images [C, H, W] (or [H, W] for one channel), pixels in [0, 1]")


class AttackRequest(BaseModel):
    """JSON body of `POST /v1/attack`."""

    input: list[Any] = Field(description="one image [C, H, W] (or [H, W]), pixels in [0, 1]")
    eps: float = Field(0.3, gt=0, le=1, description="L-inf budget in pixel units of [0, 1] images")


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """JSON body of `POST /v2/models/{name}/infer` (Open Inference Protocol)."""

    id: str | None = None
    inputs: list[InferTensor]
    outputs: list[dict[str, Any]] | None = None


def inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its local `#/$defs/...` references replaced by their definitions (none is recursive)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: inline_refs(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [inline_refs(value, defs) for value in node]
    return node


def body_doc(model: type[BaseModel], multipart: bool = False) -> dict[str, Any]:
    schema = model.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": inline_refs(schema, schema.get("$defs", {}))}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}
    return {"requestBody": {"required": True, "content": content}}
