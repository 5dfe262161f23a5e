"""A path parameter API Gateway routes but the handler's resolver cannot match (control
characters, found by `make fuzz`) is the parameter's 400, as documented, not a 404."""

import pytest

from tests.conftest import all_items


@pytest.mark.parametrize(("method", "path", "code"), [
    ("POST", "/connect-sessions/a\tb/complete", "invalid_session_id"),
    ("GET", "/connections/user\x1d1", "invalid_connection_id"),
    ("PATCH", "/connections/user\t1", "invalid_connection_id"),
    ("DELETE", "/connections/user\t1", "invalid_connection_id"),
    ("PUT", "/connections/user\t1/api-key", "invalid_connection_id"),
    ("GET", "/connections/user\t1/token", "invalid_connection_id"),
    ("POST", "/connections/user\t1/refresh", "invalid_connection_id"),
])
def test_a_path_parameter_with_a_control_character_is_its_400(broker, dynamodb, stack, method, path, code):
    body = {"completion_code": "x"} if path.endswith("/complete") else {"tags": {}} if method == "PATCH" else None
    answer = broker.call(method, path, body=body)

    assert (answer.status, answer.json["error"]) == (400, code)
    assert all_items(dynamodb, stack) == []
