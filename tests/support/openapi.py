"""docs/openapi.yaml as a contract the tests hold the broker to.

`Contract.routes()` answers the document's routes in template.yaml's terms (method, path,
auth), and `Contract.problems()` checks one HTTP answer against the document: a documented
status (or `default`), a documented content type, the body valid against its JSON Schema
(OpenAPI 3.1 schemas are JSON Schema 2020-12) and the required headers present.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
ANY_METHOD = "x-amazon-apigateway-any-method"  # API Gateway's extension for the template's ANY
GREEDY = {"/connections/{connection_id}/proxy/{path}": "/connections/{connection_id}/proxy/{path+}"}
BASE = "urn:insightly-connect:openapi"


def load_document(path: Path = DOCUMENT) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


class Contract:
    def __init__(self, document: dict[str, Any] | None = None):
        self.document = document or load_document()
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry = Registry().with_resource(BASE, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    # -- routes ------------------------------------------------------------------------------

    def routes(self) -> set[tuple[str, str, str]]:
        """(method, template path, auth) per route: ANY for a path item with the any-method
        extension (its concrete methods only spell ANY out for clients), AWS_IAM or NONE."""
        found = set()
        for path, item in self.document["paths"].items():
            template_path = GREEDY.get(path, path)
            if ANY_METHOD in item:
                found.add(("ANY", template_path, self._auth(item[ANY_METHOD])))
                continue
            for method in METHODS:
                if method in item:
                    found.add((method.upper(), template_path, self._auth(item[method])))
        return found

    def _auth(self, operation: dict[str, Any]) -> str:
        schemes = {name for requirement in operation.get("security", self.document.get("security", []))
                   for name in requirement}
        return "AWS_IAM" if schemes == {"sigv4"} else "NONE" if not schemes else f"unknown {sorted(schemes)}"

    @cached_property
    def _patterns(self) -> list[tuple[re.Pattern, str]]:
        def pattern(path: str) -> re.Pattern:
            greedy = path in GREEDY
            regex = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>.+)" if greedy and m.group(1) == "path"
                           else f"(?P<{m.group(1)}>[^/]+)", re.escape(path))
            return re.compile(regex)
        # Literal paths first, as API Gateway picks them.
        return sorted(((pattern(p), p) for p in self.document["paths"]), key=lambda x: x[1].count("{"))

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for pattern, template in self._patterns:
            if pattern.fullmatch(path):
                item = self.document["paths"][template]
                return item.get(method.lower()) or item.get(ANY_METHOD)
        return None

    # -- answers -----------------------------------------------------------------------------

    def problems(self, method: str, path: str, status: int, headers: list[tuple[str, str]] | dict[str, str],
                 body: bytes) -> list[str]:
        """What in one answer the document does not allow; [] for an answer it allows, or for a
        request that is no operation of the document (API Gateway's 404, /openapi.yaml)."""
        path = path.split("?", 1)[0]
        operation = self.operation(method, path)
        if operation is None:
            return []
        where = f"{method} {path} -> {status}"
        responses = operation["responses"]
        response = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
        if response is None:
            return [f"{where}: status not documented (documented: {sorted(responses)})"]
        response = self._resolve(response)
        header_map = {k.lower(): v for k, v in (headers.items() if isinstance(headers, dict) else headers)}
        found = []
        for name, header in (response.get("headers") or {}).items():
            if self._resolve(header).get("required") and name.lower() not in header_map:
                found.append(f"{where}: required header {name} missing")
        content = response.get("content") or {}
        if not body:
            return found
        if not content:
            return [*found, f"{where}: a body where the document has none"]
        media = header_map.get("content-type", "").split(";", 1)[0].strip().lower()
        key = media if media in content else "*/*" if "*/*" in content else None
        if key is None:
            return [*found, f"{where}: content type {media or '(none)'} not documented ({sorted(content)})"]
        schema = content[key].get("schema")
        if media == "application/json" and schema:
            try:
                data = json.loads(body)
            except ValueError:
                return [*found, f"{where}: the body is not JSON"]
            for error in self._validator(json.dumps(schema, sort_keys=True)).iter_errors(data):
                found.append(f"{where}: {'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message}")
        return found

    def _validator(self, schema_text: str) -> Draft202012Validator:
        if schema_text not in self._validators:
            schema = _rebase(json.loads(schema_text))
            self._validators[schema_text] = Draft202012Validator(schema, registry=self._registry)
        return self._validators[schema_text]

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node


def _rebase(node: Any) -> Any:
    """Local refs (#/components/...) pointed at the document registered under BASE."""
    if isinstance(node, dict):
        return {k: (BASE + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else _rebase(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node
