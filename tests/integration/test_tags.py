"""Tags and metadata on connections (issue 10, point 1): given on the connect session or the
backend's key route, set with PATCH /connections/{id}; in the status JSON, tags in every
lifecycle event; over the limits a 400 that changes nothing."""

import json

import pytest

from tests.integration.test_connect_flow import assert_json_error, connection_item
from tests.support.inprocess import RETURN_TO, query_of

TAGS = {"customer": "acme-42", "plan": "pro"}


@pytest.fixture
def account(provider):
    return provider.issue_api_key("eu1")


def connect_with_tags(broker, connection_id="user-1", tags=TAGS):
    """The whole OAuth flow, the session created with tags (completed when binding asks)."""
    session = broker.call("POST", "/connect-sessions", body={
        "connection_id": connection_id, "return_to": RETURN_TO, "tags": tags})
    assert session.status == 201, session.body
    redirect = broker.authorize(session.json["connect_url"])
    landing = broker.callback(broker.provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value)
    returned = query_of(landing.location)
    if returned.get("status") == "pending":
        assert broker.complete(returned["session_id"], returned["completion_code"]).status == 200
    return landing


def status_of(broker, connection_id="user-1"):
    answer = broker.call("GET", f"/connections/{connection_id}")
    assert answer.status == 200, answer.body
    return answer.json


def test_tags_given_on_the_connect_session_reach_the_connection_and_its_event(broker, lifecycle_events):
    connect_with_tags(broker)

    assert status_of(broker)["tags"] == TAGS
    assert status_of(broker)["metadata"] is None
    events = lifecycle_events()
    assert [(e["detail-type"], e["detail"]["tags"]) for e in events] == [("Connected", TAGS)]


def test_tags_given_on_an_api_key_session_reach_the_connection(broker, account):
    session = broker.call("POST", "/connect-sessions", body={
        "connection_id": "user-1", "return_to": RETURN_TO, "auth_mode": "api_key", "tags": TAGS})
    landing = broker.submit_key(broker.open_key_page(session.json["connect_url"]), account["api_key"],
                                account["api_url"])
    returned = query_of(landing.location)
    if returned.get("status") == "pending":
        assert broker.complete(returned["session_id"], returned["completion_code"]).status == 200

    assert status_of(broker)["tags"] == TAGS


def test_the_backend_key_route_takes_tags(broker, account, lifecycle_events):
    answer = broker.call("PUT", "/connections/user-1/api-key", body={
        "api_key": account["api_key"], "api_url": account["api_url"], "tags": TAGS})

    assert answer.status == 200 and answer.json["tags"] == TAGS
    assert lifecycle_events()[0]["detail"]["tags"] == TAGS


def test_a_reconnect_without_tags_keeps_them_and_one_with_tags_replaces_them(broker):
    connect_with_tags(broker)
    broker.connect("user-1")
    assert status_of(broker)["tags"] == TAGS

    connect_with_tags(broker, tags={"plan": "free"})
    assert status_of(broker)["tags"] == {"plan": "free"}


@pytest.mark.parametrize("tags", [
    {f"k{i}": "v" for i in range(11)},  # more than 10
    {"Upper": "v"},  # key outside ^[a-z0-9_.-]{1,64}$
    {"k" * 65: "v"},
    {"": "v"},
    {"plan": "x" * 256},  # value over 255 characters
    {"plan": 3},  # not a string
    ["plan", "pro"],  # not an object
])
def test_tags_over_the_limits_are_refused_and_nothing_is_written(broker, account, dynamodb, stack, tags):
    session = broker.call("POST", "/connect-sessions", body={
        "connection_id": "user-1", "return_to": RETURN_TO, "tags": tags})
    put = broker.call("PUT", "/connections/user-1/api-key", body={
        "api_key": account["api_key"], "api_url": account["api_url"], "tags": tags})

    assert_json_error(session, 400, "invalid_tags")
    assert_json_error(put, 400, "invalid_tags")
    assert dynamodb.scan(TableName=stack.refs["FlowTable"])["Items"] == []
    assert connection_item(dynamodb, stack) is None


def test_patch_sets_tags_and_metadata(broker, lifecycle_events):
    broker.connect("user-1")
    lifecycle_events()

    answer = broker.call("PATCH", "/connections/user-1", body={"tags": TAGS, "metadata": {"crm_seat": 3}})

    assert answer.status == 200, answer.body
    assert answer.json["tags"] == TAGS and answer.json["metadata"] == {"crm_seat": 3}
    assert status_of(broker)["metadata"] == {"crm_seat": 3}
    # Metadata alone leaves the tags as they were.
    broker.call("PATCH", "/connections/user-1", body={"metadata": {"crm_seat": 4}})
    assert status_of(broker)["tags"] == TAGS and status_of(broker)["metadata"] == {"crm_seat": 4}
    # Later lifecycle events carry the tags.
    assert broker.call("DELETE", "/connections/user-1").status == 204
    assert [(e["detail-type"], e["detail"]["tags"]) for e in lifecycle_events()] == [("Deleted", TAGS)]


@pytest.mark.parametrize(("body", "code"), [
    ({"metadata": {"blob": "x" * 4100}}, "invalid_metadata"),
    ({"metadata": [1, 2]}, "invalid_metadata"),
    ({"metadata": "text"}, "invalid_metadata"),
    ({"tags": {"BAD": "v"}, "metadata": {"ok": 1}}, "invalid_tags"),
    ({"tags": TAGS, "metadata": {"blob": "x" * 4100}}, "invalid_metadata"),
    ({}, "invalid_body"),
])
def test_a_bad_patch_is_refused_and_changes_nothing(broker, dynamodb, stack, body, code):
    connect_with_tags(broker)
    before = connection_item(dynamodb, stack)

    assert_json_error(broker.call("PATCH", "/connections/user-1", body=body), 400, code)
    assert connection_item(dynamodb, stack) == before


def test_patch_of_an_unknown_connection_is_404_and_creates_nothing(broker, dynamodb, stack):
    assert_json_error(broker.call("PATCH", "/connections/nobody", body={"tags": TAGS}), 404, "connection_not_found")
    assert connection_item(dynamodb, stack, "nobody") is None


def test_metadata_is_stored_as_json_text_and_comes_back_the_same(broker, dynamodb, stack):
    broker.connect("user-1")
    metadata = {"nested": {"list": [1, 2.5, None, True], "text": "ü"}}

    broker.call("PATCH", "/connections/user-1", body={"metadata": metadata})

    assert status_of(broker)["metadata"] == metadata
    assert json.loads(connection_item(dynamodb, stack)["metadata"]["S"]) == metadata
