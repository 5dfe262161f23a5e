"""docs/openapi.yaml stays the broker's contract: the template's routes and auth types, both
ways; a valid OpenAPI 3.1 document; every error code the broker can answer in its enum; and
the local gateway serves it at /openapi.yaml."""

import json
import re
from pathlib import Path

import pytest
import requests
import schemathesis
from openapi_spec_validator import validate

from local.gateway import Gateway
from local.stack import Stack
from tests.support.openapi import DOCUMENT, Contract, load_document

BROKER = Path(__file__).resolve().parents[2] / "layers" / "common" / "broker"
# The codes made at run time from a name (requests_in.single/random_token, key_page.parse_form,
# flow_table's "invalid_{kind}" / "{kind}_expired"), for the names the code passes.
COMPOSED_CODES = {"missing_session", "missing_state", "missing_code", "missing_csrf", "missing_api_key",
                  "missing_api_url", "invalid_session", "invalid_state", "invalid_session_id", "invalid_csrf",
                  "invalid_api_key", "invalid_api_url", "session_expired", "state_expired"}


def template_routes() -> set[tuple[str, str, str]]:
    return {(r["method"], r["path"], r["auth"]) for r in Stack().http_routes()}


def test_every_template_route_is_in_the_document_with_its_auth_type():
    assert template_routes() - Contract().routes() == set()


def test_every_route_in_the_document_is_in_the_template_with_its_auth_type():
    assert Contract().routes() - template_routes() == set()


def test_the_document_is_valid_openapi_3_1_that_schemathesis_loads():
    document = load_document()
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on an invalid document
    schema = schemathesis.openapi.from_path(DOCUMENT)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(
        sum(1 for method in ("get", "post", "put", "patch", "delete") if method in item)
        for item in document["paths"].values())


def test_every_error_code_the_broker_raises_is_in_the_error_enum():
    source = "\n".join(p.read_text() for p in BROKER.rglob("*.py"))
    literal = set(re.findall(r'\bcode ?= ?"([a-z_]+)"', source))
    literal |= set(re.findall(r'error_response\(\d+, "([a-z_]+)"', source))
    enum = set(load_document()["components"]["schemas"]["ErrorCode"]["enum"])
    assert literal, "no codes found: the pattern no longer matches the code"
    assert (literal | COMPOSED_CODES) - enum == set()


def test_backend_routes_carry_the_sigv4_scheme_and_browser_routes_none():
    document = load_document()
    scheme = document["components"]["securitySchemes"]["sigv4"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert scheme["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert {auth for _, path, auth in Contract().routes() if path.startswith(("/oauth/", "/connect/"))} == {"NONE"}


@pytest.mark.parametrize(("status", "body", "problem"), [
    (404, {"error": "no_such_code", "message": "x"}, "is not one of"),
    (418, {"error": "not_found", "message": "x"}, "status not documented"),
    (200, {"connection_id": "a"}, "is a required property"),
])
def test_the_contract_finds_an_answer_the_document_does_not_allow(status, body, problem):
    found = Contract().problems("GET", "/connections/a", status, {"Content-Type": "application/json"},
                                json.dumps(body).encode())
    assert problem in " ".join(found)


def test_the_contract_requires_the_location_of_a_redirect():
    assert "Location" in " ".join(Contract().problems("GET", "/oauth/authorize", 302, {}, b""))
    assert Contract().problems("GET", "/oauth/authorize", 302, {"Location": "https://example.com/"}, b"") == []


def test_the_local_gateway_serves_the_document_and_shows_its_observer_every_answer():
    seen = []
    with Gateway(Stack(), port=0, access_log=False) as gateway:  # no AWS needed for this route
        gateway.observer = lambda *answer: seen.append(answer)
        answer = requests.get(f"{gateway.url}/openapi.yaml", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/yaml"
    assert answer.content == DOCUMENT.read_bytes()
    assert [(method, target, status) for method, target, status, _, _ in seen] == [("GET", "/openapi.yaml", 200)]
