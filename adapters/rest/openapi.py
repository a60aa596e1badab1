"""Build the OpenAPI 3.1 document from the registered operations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from adapters.rest.routing import ApiRoutes

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{([^}:]+)}")

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem document",
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "message": {"type": "string"}, "line": {"type": "integer"}}}},
    },
    "required": ["type", "title", "status"],
}


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": _REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": {k: v for k, v in prop.items() if k not in ("title", "description")}}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def build_openapi(routes: ApiRoutes, version: str) -> dict[str, Any]:
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for op in routes.operations:
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PATH_PARAM.findall(op.path)]
        if op.query:
            params += _query_parameters(op.query)
        entry: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": f"{op.method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', op.path).strip('_')}",
            "parameters": params,
            "responses": {str(op.status): {"description": "success"},
                          "default": {"description": "problem",
                                      "content": {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}}}},
        }
        for status, text in op.responses.items():
            entry["responses"][str(status)] = {"description": text}
        if op.body is not None:
            ref = _schema_ref(op.body, components)
            content = {media: {"schema": ref if media.endswith("json") else {"type": "string"}}
                       for media in op.body_media}
            entry["requestBody"] = {"required": True, "content": content}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "mdmhub HTTP-API", "version": version,
                 "description": "Device lifecycle, administration and data of the mdmhub meter data hub."},
        "paths": paths,
        "components": {"schemas": components},
    }


@dataclass(frozen=True)
class XmlEndpoint:
    """A route of an XML or SOAP edge (61968-100, IEEE 1888, the public SOAP API), listed in the
    OpenAPI document so every served route is described in one place; its messages are defined by
    its WSDL or XSDs, which ``doc`` names."""

    path: str
    method: str
    summary: str
    tag: str
    doc: str
    media: str = "text/xml"


def xml_paths(endpoints: list[XmlEndpoint]) -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        entry: dict[str, Any] = {
            "summary": ep.summary,
            "description": f"Not JSON: messages as defined by {ep.doc}.",
            "tags": [ep.tag],
            "operationId": f"{ep.method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', ep.path).strip('_')}",
            "parameters": [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                           for name in _PATH_PARAM.findall(ep.path)],
            "responses": {"200": {"description": "success", "content": {ep.media: {"schema": {"type": "string"}}}}},
        }
        if ep.method.upper() == "POST":
            entry["requestBody"] = {"required": True, "content": {ep.media: {"schema": {"type": "string"}}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = entry
    return paths
