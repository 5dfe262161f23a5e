"""Item schema versions (issue 11, point 8): items written before `schema_version` existed
(every item of a stack deployed today) keep working; an item of a newer version (the stack
was rolled back below the code that wrote it) is refused clearly and left as it is."""

import json
import time

import pytest

from tests.integration.test_connect_flow import assert_json_error, connection_item, flow_items
from tests.integration.test_scheduler import run_scheduler, run_worker
from tests.integration.test_session_binding import completion_items, expire_completions, pending_flow
from tests.integration.test_tokens import make_due
from tests.support.inprocess import query_of


def set_schema(dynamodb, table, key, version):
    """Rewrite an item's schema_version: None removes it, as the code before versions wrote it."""
    if version is None:
        update = {"UpdateExpression": "REMOVE schema_version"}
    else:
        update = {"UpdateExpression": "SET schema_version = :v",
                  "ExpressionAttributeValues": {":v": {"N": str(version)}}}
    dynamodb.update_item(TableName=table, Key=key, **update)


def as_before_versions(dynamodb, stack, connection_id="user-1"):
    set_schema(dynamodb, stack.refs["ConnectionsTable"], {"connection_id": {"S": connection_id}}, None)
    assert "schema_version" not in connection_item(dynamodb, stack, connection_id)


def flow_item(dynamodb, stack, prefix):
    [item] = [i for i in flow_items(dynamodb, stack) if i["flow_key"]["S"].startswith(prefix)]
    return item


# -- written today: no schema_version ----------------------------------------------------------

def test_writers_write_the_current_schema_version(broker, dynamodb, stack):
    session = broker.create_session("user-1")
    assert flow_item(dynamodb, stack, "session#")["schema_version"] == {"N": "1"}
    redirect = broker.authorize(session.json["connect_url"])
    assert flow_item(dynamodb, stack, "state#")["schema_version"] == {"N": "1"}
    broker.callback(broker.provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value)
    assert completion_items(dynamodb, stack)[0]["schema_version"] == {"N": "1"}
    broker.connect("user-2")
    assert connection_item(dynamodb, stack, "user-2")["schema_version"] == {"N": "1"}


def test_a_connection_written_before_schema_versions_is_read_refreshed_listed_and_deleted(broker, dynamodb, stack):
    broker.connect("user-1")
    as_before_versions(dynamodb, stack)

    assert broker.call("GET", "/connections/user-1").json["status"] == "active"
    assert broker.call("GET", "/connections/user-1/token").status == 200
    assert broker.call("POST", "/connections/user-1/refresh").status == 200
    assert connection_item(dynamodb, stack)["schema_version"] == {"N": "1"}  # rewritten in the current format

    as_before_versions(dynamodb, stack)
    make_due(dynamodb, stack)
    assert run_worker(json.dumps({"connection_id": "user-1"})) == {"batchItemFailures": []}
    assert broker.provider.calls["refresh_token"] == 2

    as_before_versions(dynamodb, stack)
    assert broker.call("PATCH", "/connections/user-1", body={"tags": {"plan": "pro"}}).status == 200
    as_before_versions(dynamodb, stack)
    listed = broker.call("GET", "/connections")
    assert [c["connection_id"] for c in listed.json["connections"]] == ["user-1"]
    assert broker.call("DELETE", "/connections/user-1").status in (200, 204)
    assert connection_item(dynamodb, stack) is None


def test_flow_items_written_before_schema_versions_still_finish_the_connect_flow(broker, dynamodb, stack):
    table = stack.refs["FlowTable"]
    session = broker.create_session("user-1")
    set_schema(dynamodb, table, {"flow_key": flow_item(dynamodb, stack, "session#")["flow_key"]}, None)
    redirect = broker.authorize(session.json["connect_url"])
    assert redirect.status == 302, redirect.body
    set_schema(dynamodb, table, {"flow_key": flow_item(dynamodb, stack, "state#")["flow_key"]}, None)
    landing = broker.callback(broker.provider.approve(redirect.location), redirect.cookie("ic_oauth_browser").value)
    returned = query_of(landing.location)
    set_schema(dynamodb, table, {"flow_key": completion_items(dynamodb, stack)[0]["flow_key"]}, None)

    assert broker.complete(returned["session_id"], returned["completion_code"]).status == 200
    assert connection_item(dynamodb, stack)["status"]["S"] == "active"


# -- written by a newer version: refused, untouched ----------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/connections/user-1", None), ("GET", "/connections/user-1/token", None),
    ("POST", "/connections/user-1/refresh", None), ("PATCH", "/connections/user-1", {"tags": {"plan": "pro"}}),
    ("DELETE", "/connections/user-1", None), ("GET", "/connections/user-1/proxy/Contacts", None),
])
def test_a_connection_of_a_newer_schema_version_is_refused_and_left_untouched(broker, dynamodb, stack,
                                                                               method, path, body):
    broker.connect("user-1")
    set_schema(dynamodb, stack.refs["ConnectionsTable"], {"connection_id": {"S": "user-1"}}, 2)
    before = connection_item(dynamodb, stack)

    answer = broker.call(method, path, body=body)

    assert_json_error(answer, 409, "unsupported_schema_version")
    assert "newer version of the broker" in answer.json["message"]
    assert connection_item(dynamodb, stack) == before
    assert broker.provider.calls["refresh_token"] == 0


def test_the_listing_leaves_out_a_connection_of_a_newer_schema_version_and_writes_nothing(broker, dynamodb, stack):
    # After a rollback this code cannot read the newer item: it is left out of the page (its
    # own GET answers 409), the rest of the page is still served, and nothing is written.
    broker.connect("user-1")
    broker.connect("user-2")
    set_schema(dynamodb, stack.refs["ConnectionsTable"], {"connection_id": {"S": "user-1"}}, 2)
    before = connection_item(dynamodb, stack)

    listed = broker.call("GET", "/connections")

    assert listed.status == 200
    assert [c["connection_id"] for c in listed.json["connections"]] == ["user-2"]
    assert connection_item(dynamodb, stack) == before


def test_a_reconnect_does_not_overwrite_a_connection_of_a_newer_schema_version(broker, dynamodb, stack):
    broker.connect("user-1")
    set_schema(dynamodb, stack.refs["ConnectionsTable"], {"connection_id": {"S": "user-1"}}, 2)
    before = connection_item(dynamodb, stack)

    landing = broker.connect("user-1")

    assert_json_error(landing.completion, 409, "unsupported_schema_version")
    assert connection_item(dynamodb, stack) == before


def test_the_background_refresh_skips_a_connection_of_a_newer_schema_version(broker, dynamodb, stack):
    broker.connect("user-1")
    make_due(dynamodb, stack)
    set_schema(dynamodb, stack.refs["ConnectionsTable"], {"connection_id": {"S": "user-1"}}, 2)
    before = connection_item(dynamodb, stack)

    # Done, not returned to the queue: redelivering cannot help until the newer code is back.
    assert run_worker(json.dumps({"connection_id": "user-1"})) == {"batchItemFailures": []}

    assert broker.provider.calls["refresh_token"] == 0
    assert connection_item(dynamodb, stack) == before


def test_flow_items_of_a_newer_schema_version_are_refused_and_left_untouched(broker, dynamodb, stack):
    table = stack.refs["FlowTable"]
    session = broker.create_session("user-1")
    session_key = {"flow_key": flow_item(dynamodb, stack, "session#")["flow_key"]}
    set_schema(dynamodb, table, session_key, 2)
    before = flow_items(dynamodb, stack)

    answer = broker.authorize(session.json["connect_url"])

    assert answer.status == 409, answer.body
    assert "unsupported_schema_version" in answer.body
    assert flow_items(dynamodb, stack) == before


def test_a_pending_completion_of_a_newer_schema_version_is_refused_and_not_swept(broker, dynamodb, stack):
    session_id, returned = pending_flow(broker)
    [completion] = completion_items(dynamodb, stack)
    set_schema(dynamodb, stack.refs["FlowTable"], {"flow_key": completion["flow_key"]}, 2)

    assert_json_error(broker.complete(session_id, returned["completion_code"]), 409, "unsupported_schema_version")
    expire_completions(dynamodb, stack)
    before = completion_items(dynamodb, stack)
    run_scheduler()

    assert completion_items(dynamodb, stack) == before
    assert broker.provider.calls["revoke"] == 0
    assert connection_item(dynamodb, stack) is None
    assert int(before[0]["complete_by"]["N"]) < time.time()
