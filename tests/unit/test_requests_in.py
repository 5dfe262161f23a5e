import base64

import pytest

from broker.http import requests_in
from broker.platform.errors import InvalidRequest

ALLOWED = frozenset({"https://app.example.com", "http://localhost:8080"})


@pytest.mark.parametrize("value", ["user-1", "a" * 128, "tenant:42@org.example", "A.b_c-d"])
def test_connection_ids_of_the_contract_are_accepted(value):
    assert requests_in.connection_id(value) == value


@pytest.mark.parametrize("value", ["", "a" * 129, "has space", "slash/inside", "ünicode", None, 42, ["x"]])
def test_other_connection_ids_are_rejected(value):
    with pytest.raises(InvalidRequest) as caught:
        requests_in.connection_id(value)
    assert caught.value.code == "invalid_connection_id"


@pytest.mark.parametrize("value", [
    "https://app.example.com/settings?tab=crm",
    "https://APP.example.com:443/x",
    "http://localhost:8080/",
])
def test_return_to_on_an_allowed_origin_is_accepted(value):
    assert requests_in.return_to(value, ALLOWED) == value


@pytest.mark.parametrize("value,code", [
    ("https://evil.example.com/", "return_to_not_allowed"),
    ("https://app.example.com.evil.com/", "return_to_not_allowed"),
    ("http://app.example.com/", "return_to_not_allowed"),  # scheme is part of the origin
    ("https://app.example.com:8443/", "return_to_not_allowed"),
    ("http://localhost:8081/", "return_to_not_allowed"),
    ("https://user:pw@app.example.com/", "invalid_return_to"),
    ("https://app.example.com/#frag", "invalid_return_to"),
    ("javascript:alert(1)", "invalid_return_to"),
    ("//app.example.com/", "invalid_return_to"),
    ("/relative", "invalid_return_to"),
    ("https://app.example.com\\@evil.com/", "invalid_return_to"),
    ("https://app.example.com/\r\nSet-Cookie: x", "invalid_return_to"),
    ("https://app.example.com:99999/", "invalid_return_to"),
    ("https://app.example.com/" + "a" * 2048, "invalid_return_to"),
    (None, "invalid_return_to"),
])
def test_return_to_elsewhere_is_rejected(value, code):
    with pytest.raises(InvalidRequest) as caught:
        requests_in.return_to(value, ALLOWED)
    assert caught.value.code == code


def test_a_repeated_query_parameter_is_rejected():
    params = requests_in.query_params("session=a&session=b")
    with pytest.raises(InvalidRequest, match="more than once"):
        requests_in.single(params, "session")


def test_a_json_body_repeating_a_field_is_rejected():
    with pytest.raises(InvalidRequest, match="repeats"):
        requests_in.json_object('{"a": 1, "a": 2}', allowed={"a"}, required={"a"})


def test_error_messages_never_echo_the_rejected_value():
    secretish = "x" * 50 + "SECRET"
    with pytest.raises(InvalidRequest) as caught:
        requests_in.random_token(secretish, "state")
    assert "SECRET" not in caught.value.message


def test_unknown_json_fields_are_refused_without_naming_them():
    body = '{"a": 1, "<script>alert(1)</script>": 2, "ya29.a0AfH6SM-token": 3}'
    with pytest.raises(InvalidRequest) as caught:
        requests_in.json_object(body, allowed={"a"}, required={"a"})
    assert caught.value.code == "invalid_body"
    assert "unknown field" in caught.value.message
    assert "script" not in caught.value.message and "ya29" not in caught.value.message


@pytest.mark.parametrize("body,base64_encoded", [
    (base64.b64encode(b'{"a": "\xff\xfe"}').decode(), True),  # not UTF-8
    (base64.b64encode('{"a": "é"}'.encode("latin-1")).decode(), True),
    ("not base64 at all!", True),
    (base64.b64encode(b"x" * (requests_in.MAX_BODY + 1)).decode(), True),
    ('{"a": "\\ud800"}', False),  # an escaped lone surrogate is no text
])
def test_a_body_that_is_not_utf8_json_is_invalid_body(body, base64_encoded):
    with pytest.raises(InvalidRequest) as caught:
        requests_in.json_object(requests_in.body_text(body, base64_encoded=base64_encoded),
                                allowed={"a"}, required={"a"})
    assert caught.value.code == "invalid_body"


@pytest.mark.parametrize("body,base64_encoded", [
    ('{"a": "é"}', False),
    (base64.b64encode('{"a": "é"}'.encode()).decode(), True),
])
def test_utf8_json_is_read_whether_or_not_base64_encoded(body, base64_encoded):
    text = requests_in.body_text(body, base64_encoded=base64_encoded)
    assert requests_in.json_object(text, allowed={"a"}, required={"a"}) == {"a": "é"}
