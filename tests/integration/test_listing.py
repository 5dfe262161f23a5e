"""GET /connections (issue 10, point 2): filtered pages of status JSON from the indexes,
never a credential, a signed cursor; bad input a 400 that changes nothing."""

import time

import boto3
import pytest

from broker import services
from tests.integration.test_connect_flow import assert_json_error
from tests.integration.test_scheduler_scale import count_dynamodb_reads
from tests.integration.test_tags import connect_with_tags


@pytest.fixture
def tagged_stack(stack, monkeypatch):
    """The stack deployed with ListTagKey=plan."""
    monkeypatch.setenv("LIST_TAG_KEY", "plan")
    services.reset()
    return stack


def listing(broker, query=""):
    answer = broker.call("GET", "/connections", query=query)
    assert answer.status == 200, answer.body
    return answer.json


def ids(page):
    return sorted(c["connection_id"] for c in page["connections"])


@pytest.fixture
def two_connections(tagged_stack, broker, provider):
    connect_with_tags(broker, "user-1", {"plan": "pro", "customer": "acme"})
    account = provider.issue_api_key("eu1")
    assert broker.connect_with_key("user-2", account["api_key"], account["api_url"]).linked
    return broker


def test_each_filter_answers_its_connections_as_status_json_without_credentials(two_connections):
    broker = two_connections
    everything = listing(broker)
    assert ids(everything) == ["user-1", "user-2"] and everything["next_cursor"] is None
    assert everything["connections"][0].keys() == broker.call("GET", "/connections/user-1").json.keys()
    assert "credentials" not in str(everything)
    assert ids(listing(broker, "auth_mode=api_key")) == ["user-2"]
    assert ids(listing(broker, "auth_mode=oauth2")) == ["user-1"]
    assert ids(listing(broker, "status=active")) == ["user-1", "user-2"]
    assert ids(listing(broker, "status=needs_reauth")) == []
    assert ids(listing(broker, "tag.plan=pro")) == ["user-1"]


def test_a_tag_set_by_patch_moves_the_connection_in_the_tag_index(two_connections):
    broker = two_connections
    assert broker.call("PATCH", "/connections/user-2", body={"tags": {"plan": "pro"}}).status == 200
    assert broker.call("PATCH", "/connections/user-1", body={"tags": {"customer": "acme"}}).status == 200
    assert ids(listing(broker, "tag.plan=pro")) == ["user-2"]


def test_pages_follow_the_cursor_to_the_end(two_connections):
    broker = two_connections
    seen, cursor = [], None
    for _ in range(5):
        page = listing(broker, "limit=1" + (f"&cursor={cursor}" if cursor else ""))
        seen += ids(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["user-1", "user-2"]


@pytest.mark.parametrize(("query", "code"), [
    ("limit=0", "invalid_limit"), ("limit=101", "invalid_limit"), ("limit=ten", "invalid_limit"),
    ("status=broken", "invalid_filter"), ("auth_mode=basic", "invalid_filter"),
    ("status=active&auth_mode=oauth2", "unsupported_filter"), ("tag.customer=acme", "unsupported_filter"),
    ("owner=me", "unsupported_filter"), ("cursor=abc.def", "invalid_cursor"), ("cursor=%%%", "invalid_cursor"),
])
def test_bad_queries_are_a_400(two_connections, query, code):
    assert_json_error(two_connections.call("GET", "/connections", query=query), 400, code)


def test_a_tampered_cursor_or_one_from_another_filter_is_a_400(two_connections):
    broker = two_connections
    cursor = listing(broker, "limit=1")["next_cursor"]
    payload, mac = cursor.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    assert_json_error(broker.call("GET", "/connections", query=f"limit=1&cursor={forged}.{mac}"), 400,
                      "invalid_cursor")
    assert_json_error(broker.call("GET", "/connections", query=f"status=active&limit=1&cursor={cursor}"), 400,
                      "invalid_cursor")
    assert ids(listing(broker, f"limit=1&cursor={cursor}")) != []


def test_tag_filters_are_off_when_list_tag_key_is_empty(stack, broker):
    assert_json_error(broker.call("GET", "/connections", query="tag.plan=pro"), 400, "unsupported_filter")


# -- at scale ---------------------------------------------------------------------------------

TOTAL, NEED_REAUTH = 10_000, 100


def seed(stack, now: int) -> None:
    dynamodb = boto3.client("dynamodb")
    items = []
    for n in range(TOTAL):
        attention = n % (TOTAL // NEED_REAUTH) == 0
        item = {"connection_id": {"S": f"tenant-{n:05d}"}, "version": {"N": "1"},
                "status": {"S": "needs_reauth" if attention else "active"},
                "auth_mode": {"S": "api_key" if n % 2 else "oauth2"}, "created_at": {"N": str(now - n)},
                "credentials": {"B": b"sealed-" + str(n).encode()}, "tags": {"M": {"plan": {"S": f"p{n % 10}"}}},
                "list_tag": {"S": f"p{n % 10}"}}
        items.append({"PutRequest": {"Item": item}})
    for start in range(0, len(items), 25):
        dynamodb.batch_write_item(RequestItems={stack.refs["ConnectionsTable"]: items[start:start + 25]})


def test_ten_thousand_connections_each_page_reads_only_its_own_items(tagged_stack, broker):
    """A page: one Query of its keys (keys-only index) and one BatchGetItem of its items."""
    seed(tagged_stack, int(time.time()))
    calls, returned, scanned = count_dynamodb_reads()

    def walk(query, pages):
        found, cursor = [], None
        for _ in range(pages):
            page = listing(broker, query + (f"&cursor={cursor}" if cursor else ""))
            found += [c["connection_id"] for c in page["connections"]]
            assert all(c["status"] for c in page["connections"]) and "sealed-" not in str(page)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return found

    attention = walk("status=needs_reauth&limit=50", pages=5)
    assert len(attention) == NEED_REAUTH == len(set(attention))
    assert calls["Query"] <= 3 and scanned["Query"] == NEED_REAUTH  # 2 full pages (+1 empty last)
    assert calls["BatchGetItem"] == 2 and returned["BatchGetItem"] == NEED_REAUTH

    calls.clear(), scanned.clear(), returned.clear()
    first_three = walk("limit=100", pages=3)
    assert len(first_three) == 300 and calls["Query"] == 3 and scanned["Query"] == returned["Query"] == 300
    assert calls["BatchGetItem"] == 3 and returned["BatchGetItem"] == 300

    calls.clear(), scanned.clear(), returned.clear()
    assert len(walk("tag.plan=p3&limit=100", pages=2)) == 200
    assert calls["Query"] == 2 and scanned["Query"] == 200 and returned["BatchGetItem"] == 200
    calls.clear(), scanned.clear(), returned.clear()
    assert len(walk("auth_mode=api_key&limit=100", pages=1)) == 100 and scanned["Query"] == 100
    assert calls["BatchGetItem"] == 1 and returned["BatchGetItem"] == 100
    assert calls["Scan"] == 0 and calls["GetItem"] == 0


def listing_index_attributes() -> dict[str, set[str]]:
    """Per listing index, the attributes whose change writes it (DynamoDB writes an index entry
    only when one of its key or projected attributes changes)."""
    from local.stack import load_template

    table = load_template()["Resources"]["ConnectionsTable"]["Properties"]
    found = {}
    for index in table["GlobalSecondaryIndexes"]:
        if index["IndexName"] not in ("status-index", "mode-index", "tag-index"):
            continue
        keys = {k["AttributeName"] for k in index["KeySchema"]}
        projection = index["Projection"]
        found[index["IndexName"]] = keys | set(projection.get("NonKeyAttributes", [])) | (
            {"*"} if projection["ProjectionType"] == "ALL" else set())
    return found


def test_refreshes_and_quota_observations_write_no_listing_index(tagged_stack, broker, provider):
    """Every active connection shares one status-index partition ("active") and every OAuth one
    one mode-index partition: if a refresh wrote them, the refresh rate of all connections would
    land on one partition key value (1,000 WCU/s). Only connects, status changes, tags and
    deletes may write them."""
    from broker.platform import aws

    connect_with_tags(broker, "user-1", {"plan": "pro"})
    account = provider.issue_api_key("eu1")
    assert broker.connect_with_key("user-2", account["api_key"], account["api_url"]).linked
    written = []

    def before_update(params, **kwargs):
        written.append(set(params.get("ExpressionAttributeNames", {}).values()))
    aws.client("dynamodb").meta.events.register("provide-client-params.dynamodb.UpdateItem", before_update)

    assert broker.call("POST", "/connections/user-1/refresh").status == 200  # new tokens
    assert broker.call("POST", "/connections/user-2/refresh").status == 200  # the key checked
    for connection_id in ("user-1", "user-2"):  # each answer shows the quota: stored
        assert broker.call("GET", f"/connections/{connection_id}/proxy/Users/Me").status == 200

    assert len(written) >= 4
    for index, attributes in listing_index_attributes().items():
        assert "*" not in attributes
        touched = [sorted(names & attributes) for names in written if names & attributes]
        assert touched == [], f"a refresh or quota write changes {index}: {touched}"


def test_items_dynamodb_keeps_leaving_unprocessed_are_a_503_to_retry_not_a_500(two_connections, monkeypatch):
    # Throttling shows up in BatchGetItem as UnprocessedKeys: asked again with backoff, and if
    # they stay unprocessed the caller is told to try again (503), not sent a broker fault.
    store = services.token_service().connections  # the store every function shares
    asked = []

    def throttled(RequestItems):  # noqa: N803 - boto3's parameter name
        [(table, request)] = RequestItems.items()
        asked.append(len(request["Keys"]))
        return {"Responses": {table: []}, "UnprocessedKeys": RequestItems}

    monkeypatch.setattr(store._db, "batch_get_item", throttled)
    monkeypatch.setattr("broker.store.table.time.sleep", lambda seconds: None)

    answer = two_connections.call("GET", "/connections")

    assert_json_error(answer, 503, "storage_unavailable")
    assert asked == [2] * 5  # every attempt, then the answer


def test_every_dynamodb_call_of_a_listing_is_granted_by_the_connections_role(two_connections, stack):
    # moto does not enforce IAM: a call the role lacks would pass here and fail in AWS.
    from broker.platform import aws
    from tests.support.iam import not_granted, recorded_calls

    with recorded_calls(aws.client("dynamodb")) as calls:
        for query in ("", "status=active", "auth_mode=api_key", "tag.plan=pro", "limit=1"):
            listing(two_connections, query)

    assert {"Query", "BatchGetItem"} <= {operation for operation, _ in calls}
    assert not_granted(stack, "ConnectionsRole", calls) == []
