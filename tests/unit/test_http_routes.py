"""The HTTP functions dispatch on the payload 2.0 routeKey API Gateway matched (broker.http.api):
each serves exactly its routes in template.yaml, and answers the rest as the contract says."""

from collections import defaultdict

import pytest

from broker.http.api import NO_STORE, Routes, json_response
from broker.platform.errors import ConfigurationError, NotFound, ProviderUnavailable
from local.lambda_events import load_handler
from local.stack import Stack

ROUTED = defaultdict(set)
for _route in Stack().http_routes():
    ROUTED[_route["code_uri"]].add(f"{_route['method']} {_route['path']}")
PROXY = "functions/proxy/"  # one route, any method and path: no dispatch (functions/proxy/app.py)


@pytest.mark.parametrize("code_uri", sorted(set(ROUTED) - {PROXY}))
def test_every_http_function_serves_exactly_its_template_routes(code_uri):
    assert set(load_handler(code_uri).routes.handlers) == ROUTED[code_uri]


def answer_of(raises=None, route_key="GET /connections/{connection_id}", parameters=None):
    routes = Routes()

    @routes.route("GET /connections/{connection_id}")
    def get(event, connection_id):
        if raises is not None:
            raise raises
        return json_response(200, {"connection_id": connection_id})

    return routes.resolve({"routeKey": route_key, "pathParameters": parameters or {"connection_id": "user-1"}})


def test_the_handler_gets_the_path_parameters_and_its_answer_is_a_payload_2_result():
    answer = answer_of()
    assert answer == {"statusCode": 200, "body": '{"connection_id": "user-1"}', "isBase64Encoded": False,
                      "headers": {**NO_STORE, "Content-Type": "application/json"}, "cookies": []}


def test_a_domain_error_is_its_status_and_code():
    answer = answer_of(NotFound("no such connection", code="connection_not_found"))
    assert (answer["statusCode"], answer["body"]) == (
        404, '{"error": "connection_not_found", "message": "no such connection"}')


def test_a_provider_outage_carries_retry_after():
    answer = answer_of(ProviderUnavailable("try later", retry_after=30))
    assert (answer["statusCode"], answer["headers"]["Retry-After"]) == (503, "30")


def test_a_misconfiguration_names_no_setting_to_the_caller():
    answer = answer_of(ConfigurationError("environment variable FLOW_TABLE is required"))
    assert answer["statusCode"] == 500
    assert "FLOW_TABLE" not in answer["body"]


def test_an_unexpected_error_is_a_500_without_its_text():
    answer = answer_of(RuntimeError("Authorization: Bearer secret-token"))
    assert (answer["statusCode"], answer["body"]) == (
        500, '{"error": "internal_error", "message": "the broker hit an unexpected error"}')


def test_a_route_this_function_does_not_serve_is_404():
    answer = answer_of(route_key="GET /connections/{connection_id}/token")
    assert (answer["statusCode"], answer["body"]) == (404, '{"error": "route_not_found", "message": "no such route"}')


def test_a_path_parameter_with_a_control_character_is_its_400():
    answer = answer_of(parameters={"connection_id": "user\t1"})
    assert (answer["statusCode"], '"invalid_connection_id"' in answer["body"]) == (400, True)
