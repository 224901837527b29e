"""Checks a real answer against the OpenAPI document the gateway serves."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator


def _resolve(node: Any, doc: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(target, doc)
        return {k: _resolve(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, doc) for v in node]
    return node


def check_answer(
    doc: dict[str, Any], path: str, status: int, content_type: str, body: bytes
) -> None:
    """Fail unless ``doc`` declares this status and type for ``GET path`` and the body fits."""
    operation = _resolve(doc["paths"][path]["get"], doc)
    responses = operation["responses"]
    assert str(status) in responses, f"GET {path}: status {status} is not documented"
    content = responses[str(status)]["content"]
    media = content_type.split(";")[0].strip()
    matching = [key for key in content if key.split(";")[0].strip() == media]
    assert matching, f"GET {path} {status}: {content_type} is not documented"
    schema = content[matching[0]]["schema"]
    is_json = media == "application/json" or media.endswith("+json")
    value: Any = json.loads(body) if is_json else body.decode()
    Draft202012Validator(schema).validate(value)
