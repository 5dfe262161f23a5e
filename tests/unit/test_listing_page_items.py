"""ConnectionStore.list_page: keys from the keys-only index, items from the table."""

from broker.store.connections import LISTED_ATTRIBUTES, ConnectionStore


class FakeDynamoDB:
    """The index answers ids c, b, a (newest first); the table has moved b to needs_reauth and
    lost c since the index was written, and leaves a key unprocessed once."""

    def __init__(self):
        self.batches = []

    def query(self, **kwargs):
        return {"Items": [{"connection_id": {"S": i}} for i in ("c", "b", "a", "d")],
                "LastEvaluatedKey": {"connection_id": {"S": "d"}}}

    def batch_get_item(self, RequestItems):  # noqa: N803 - boto3's name
        (table, request), = RequestItems.items()
        self.batches.append(request)
        keys = [k["connection_id"]["S"] for k in request["Keys"]]
        table_items = {"a": "active", "b": "needs_reauth", "d": "active"}
        found = [{"connection_id": {"S": k}, "status": {"S": table_items[k]}} for k in keys[:-1] if k in table_items]
        unprocessed = {table: {**request, "Keys": request["Keys"][-1:]}} if len(keys) > 1 else {}
        if len(keys) == 1 and keys[0] in table_items:
            found.append({"connection_id": {"S": keys[0]}, "status": {"S": table_items[keys[0]]}})
        return {"Responses": {table: found}, "UnprocessedKeys": unprocessed}


def test_a_page_keeps_the_index_order_and_drops_items_that_moved_or_went():
    db = FakeDynamoDB()
    found, last = ConnectionStore(db, "connections", shards=1).list_page(
        "status-index", "status", "active", limit=4, start_key=None)

    assert [c.connection_id for c in found] == ["a", "d"] and last == {"connection_id": {"S": "d"}}
    assert len(db.batches) == 2  # the unprocessed key asked again
    names = db.batches[0]["ExpressionAttributeNames"].values()
    assert "credentials" not in names and set(names) == set(LISTED_ATTRIBUTES)
