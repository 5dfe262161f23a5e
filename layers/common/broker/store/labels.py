"""Tags and metadata: the SaaS's own labels on a connection.

Tags are a few short string pairs the broker can filter on and puts in every lifecycle
event; metadata is one small JSON object the broker only keeps and hands back. Neither may
hold a secret: they appear in listings and events.
"""

from __future__ import annotations

import json
import re
from typing import Any

from broker.platform.errors import InvalidRequest

TAG_KEY = re.compile(r"[a-z0-9_.-]{1,64}")
MAX_TAGS = 10
MAX_TAG_VALUE = 255
MAX_METADATA_BYTES = 4096


def check_tags(value: Any) -> dict[str, str]:
    if (not isinstance(value, dict) or len(value) > MAX_TAGS
            or not all(isinstance(k, str) and TAG_KEY.fullmatch(k) for k in value)
            or not all(isinstance(v, str) and len(v) <= MAX_TAG_VALUE for v in value.values())):
        raise InvalidRequest(f"tags must be an object of up to {MAX_TAGS} string pairs, keys matching "
                             f"^[a-z0-9_.-]{{1,64}}$, values up to {MAX_TAG_VALUE} characters", code="invalid_tags")
    return dict(value)


def check_metadata(value: Any) -> str:
    """The metadata as the JSON text stored (text: DynamoDB would turn its numbers into Decimals)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")) if isinstance(value, dict) else None
    if text is None or len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata must be a JSON object of up to {MAX_METADATA_BYTES} bytes serialized",
                             code="invalid_metadata")
    return text


def optional_tags(data: dict[str, Any]) -> dict[str, str] | None:
    return check_tags(data["tags"]) if "tags" in data else None


def update_labels(connections, connection_id: str, body: str | None, *, now: int):
    """PATCH /connections/{id}: tags, metadata and/or quota_group (null: leave the group), all
    checked before anything is written. Answers the connection as stored; NotFound for an
    unknown one (nothing is created)."""
    from broker.http import requests_in
    from broker.platform.errors import NotFound
    from broker.store.quota import check_quota_group

    connection_id = requests_in.connection_id(connection_id)
    data = requests_in.json_object(body, allowed={"tags", "metadata", "quota_group"}, required=set())
    if not data:
        raise InvalidRequest("give tags, metadata, quota_group or several", code="invalid_body")
    tags = optional_tags(data)
    metadata = check_metadata(data["metadata"]) if "metadata" in data else None
    quota_group = ... if "quota_group" not in data else (
        None if data["quota_group"] is None else check_quota_group(data["quota_group"]))
    connection = connections.save_labels(connection_id, tags=tags, metadata=metadata, now=now,
                                         quota_group=quota_group)
    if connection is None:
        raise NotFound("no such connection", code="connection_not_found")
    return connection
