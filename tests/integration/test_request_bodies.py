"""What API Gateway hands the JSON routes is read as UTF-8 JSON or refused with a 400."""

import base64
import json

import pytest

from local.lambda_events import http_event, iam_identity, match_route
from tests.conftest import all_items


def connect_session_event(broker, raw: bytes, *, content_type: str):
    route, params = match_route(broker.routes, "POST", "/connect-sessions")
    return route, http_event("POST", "/connect-sessions", route=route, path_parameters=params, body=raw,
                             headers={"Content-Type": content_type}, iam_identity=iam_identity())


@pytest.mark.parametrize("raw,content_type", [
    (b'{"connection_id": "user-1", "return_to": "https://app.example.com/\xff"}', "application/json"),
    (b"\xfe\xff\x00{\x00}", "application/json"),
    (b'{"connection_id": "user-1", "return_to": "https://app.example.com/"}'.decode().encode("utf-16"),
     "application/octet-stream"),
])
def test_a_body_that_is_not_utf8_is_a_400_and_stores_nothing(broker, dynamodb, stack, raw, content_type):
    route, event = connect_session_event(broker, raw, content_type=content_type)
    assert event["isBase64Encoded"] is True  # as HTTP API passes bytes it cannot pass as text

    answer = broker.invoke(route["code_uri"], event)

    assert answer.status == 400, answer.body
    assert answer.json["error"] == "invalid_body"
    assert all_items(dynamodb, stack) == []


def test_base64_encoded_utf8_json_is_accepted(broker):
    raw = json.dumps({"connection_id": "user-1", "return_to": "https://app.example.com/é"}).encode()
    route, event = connect_session_event(broker, raw, content_type="application/octet-stream")
    assert event["body"] == base64.b64encode(raw).decode()

    assert broker.invoke(route["code_uri"], event).status == 201


def test_an_escaped_lone_surrogate_is_a_400_not_a_500(broker, dynamodb, stack):
    answer = broker.call("POST", "/connect-sessions",
                         body='{"connection_id": "user-1", "return_to": "https://app.example.com/\\udc80"}')

    assert answer.status == 400, answer.body
    assert answer.json["error"] == "invalid_body"
    assert all_items(dynamodb, stack) == []
