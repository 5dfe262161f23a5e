"""Reading what callers send: query strings, JSON bodies, ids and return URLs.

Everything here raises InvalidRequest (400) with a message that names the field, never
echoes its value (it may be a code or a token).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from broker.platform.config import origin_of
from broker.platform.errors import InvalidRequest

CONNECTION_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
# secrets.token_urlsafe(32): 43 characters of base64url.
RANDOM_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_QUERY = 8192
MAX_BODY = 8192
MAX_RETURN_TO = 2048


def query_params(raw_query: str | None) -> dict[str, list[str]]:
    raw_query = raw_query or ""
    if len(raw_query) > MAX_QUERY:
        raise InvalidRequest("the query string is too long", code="invalid_request")
    try:
        return parse_qs(raw_query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        raise InvalidRequest("the query string has too many fields", code="invalid_request") from None


def single(params: dict[str, list[str]], name: str, *, required: bool = True, max_length: int = 2048,
           label: str | None = None) -> str | None:
    """One query parameter's only value. `label` names it in errors when `name` is the caller's
    own text (a tag filter): errors never quote what the caller chose."""
    label = label or name
    values = params.get(name)
    if not values:
        if required:
            raise InvalidRequest(f"the {label} parameter is required", code=f"missing_{label}")
        return None
    if len(values) > 1:
        raise InvalidRequest(f"the {label} parameter is given more than once", code="invalid_request")
    if len(values[0]) > max_length:
        raise InvalidRequest(f"the {label} parameter is too long", code="invalid_request")
    return values[0]


def random_token(value: str, name: str) -> str:
    if not RANDOM_TOKEN.fullmatch(value):
        raise InvalidRequest(f"the {name} is malformed", code=f"invalid_{name}")
    return value


def connection_id(value: Any) -> str:
    if not isinstance(value, str) or not CONNECTION_ID.fullmatch(value):
        raise InvalidRequest(
            "connection_id must be 1-128 characters of A-Z a-z 0-9 . _ : @ -", code="invalid_connection_id"
        )
    return value


def return_to(value: Any, allowed_origins: frozenset[str]) -> str:
    """An absolute http(s) URL whose origin is on the allow-list, without credentials or fragment."""
    if not isinstance(value, str) or not value or len(value) > MAX_RETURN_TO:
        raise InvalidRequest("return_to must be an absolute URL of up to 2048 characters", code="invalid_return_to")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a garbage port
    except ValueError:
        raise InvalidRequest("return_to is not a valid URL", code="invalid_return_to") from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None
            or parts.password is not None or parts.fragment or "\\" in value
            or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value)):
        raise InvalidRequest("return_to is not a valid URL", code="invalid_return_to")
    if origin_of(parts.scheme, parts.hostname, port) not in allowed_origins:
        raise InvalidRequest("return_to is not on the allowed origins list", code="return_to_not_allowed")
    return value


def body_text(body: str | None, *, base64_encoded: bool) -> str | None:
    """The body API Gateway passed, as text: HTTP API base64-encodes what it cannot pass as
    text, and a body that is not UTF-8 is a caller's mistake (400), not a 500."""
    if not body or not base64_encoded:
        return body
    if len(body) > MAX_BODY * 4 // 3 + 4:
        raise InvalidRequest("the body is too large", code="invalid_body")
    try:
        return base64.b64decode(body, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise InvalidRequest("the body is not UTF-8 JSON", code="invalid_body") from None


def json_object(body: str | None, *, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("a JSON object body is required", code="invalid_body")
    if len(body) > MAX_BODY:
        raise InvalidRequest("the body is too large", code="invalid_body")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise InvalidRequest("the body repeats a field", code="invalid_body")
        return dict(pairs)

    try:
        data = json.loads(body, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        raise InvalidRequest("the body is not valid JSON", code="invalid_body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_body")
    try:  # JSON may escape a lone surrogate (\udc80): valid JSON, but no text to store or send on
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("the body is not UTF-8 JSON", code="invalid_body") from None
    if set(data) - allowed:  # not named: a field name may be anything, even a secret
        raise InvalidRequest(f"the body has an unknown field (allowed: {', '.join(sorted(allowed))})",
                             code="invalid_body")
    missing = required - set(data)
    if missing:
        raise InvalidRequest(f"missing fields: {', '.join(sorted(missing))}", code="invalid_body")
    return data
