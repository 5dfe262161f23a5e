"""HTTP API (payload 2.0) events, route matching and Lambda contexts, shaped as AWS makes them.

One implementation for both callers of the handlers: the in-process broker
(tests/support/inprocess.py) and the local gateway (local/gateway.py).
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import re
import secrets
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from .stack import ACCOUNT_ID, ROOT

API_DOMAIN = "abc123defg.execute-api.us-east-1.amazonaws.com"

# Bodies API Gateway (HTTP API) hands over as text; anything else arrives base64-encoded.
_TEXT_TYPES = re.compile(r"^(text/.*|application/(json|xml|javascript|[\w.+-]+\+(json|xml)))$")


def route_key(method: str, template_path: str) -> str:
    return f"{method} {template_path}"


# -- routes --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _route_pattern(path: str) -> re.Pattern:
    parts = []
    for segment in path.strip("/").split("/"):
        greedy = re.fullmatch(r"\{(\w+)\+\}", segment)
        param = re.fullmatch(r"\{(\w+)\}", segment)
        if greedy:
            parts.append(f"(?P<{greedy.group(1)}>.+)")
        elif param:
            parts.append(f"(?P<{param.group(1)}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("/" + "/".join(parts))


def match_route(routes: list[dict], method: str, path: str) -> tuple[dict, dict[str, str]] | None:
    """The route API Gateway picks for `method` and the decoded `path`, with its path
    parameters; None when nothing matches (API Gateway's 404).

    Most specific path first (literal segments beat parameters, which beat a greedy
    parameter); on the same path the exact method beats ANY, whatever the template's order;
    `$default` catches the rest."""
    def priority(route):
        template = route["path"]
        return ("+}" in template, template.count("{"), -len(template), route["method"] == "ANY")

    for route in sorted((r for r in routes if r["path"] != "$default"), key=priority):
        if route["method"] not in (method, "ANY"):
            continue
        found = _route_pattern(route["path"]).fullmatch(path)
        if found:
            return route, found.groupdict()
    for route in routes:
        if route["path"] == "$default":
            return route, {}
    return None


# -- the event -----------------------------------------------------------------------------------

def is_text(content_type: str | None) -> bool:
    """Whether HTTP API passes a body with this Content-Type as text (else base64)."""
    return bool(content_type) and bool(_TEXT_TYPES.match(content_type.split(";")[0].strip().lower()))


def new_request_id() -> str:
    """An id shaped like API Gateway's (the `apigw-requestid` header and requestContext.requestId)."""
    return base64.b32encode(secrets.token_bytes(10)).decode().rstrip("=")


def _header_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def http_event(method: str, path: str, *, route: dict, path_parameters: dict[str, str] | None = None,
               raw_query: str = "", headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
               cookies: list[str] | None = None, body: bytes | str | None = None, domain: str = API_DOMAIN,
               iam_identity: dict | None = None, source_ip: str = "203.0.113.10", request_id: str | None = None,
               api_id: str | None = None, protocol: str = "HTTP/1.1", user_agent: str | None = "pytest",
               port: int = 443, scheme: str = "https") -> dict:
    """The payload 2.0 event API Gateway sends for this request.

    `path` is the decoded path (HTTP API decodes it). `headers`: a mapping, or the (name,
    value) pairs as sent; names are lower-cased and repeated headers joined with commas;
    Cookie headers become the `cookies` array (after `cookies`). The caller's IP is appended
    to x-forwarded-for; x-forwarded-port/-proto default to `port`/`scheme`. A `host` header
    wins over `domain` as the requestContext's domainName. `user_agent` is the User-Agent
    sent when `headers` has none (None: no User-Agent at all). rawQueryString is as sent,
    queryStringParameters decoded with repeated keys comma-joined. The body (str is taken
    as UTF-8) is text when its Content-Type is text (text/*, JSON, XML, JavaScript) and it
    decodes as UTF-8, else base64-encoded, as HTTP API does. `request_id` is the id of the
    `apigw-requestid` header (a new one when None); `api_id` defaults to the first label of
    `domain` (not of a Host header: the API that was called keeps its id)."""
    api_prefix = domain.split(":")[0].split(".")[0]  # the API's id: API Gateway's, whatever Host says
    joined, cookies = _event_headers(headers, cookies, domain=domain, user_agent=user_agent, source_ip=source_ip,
                                     port=port, scheme=scheme)
    domain = joined["host"]
    raw, text = _event_body(body, joined.get("content-type"))
    key = "$default" if route["path"] == "$default" else route_key(route.get("method", method), route["path"])
    event = {
        "version": "2.0",
        "routeKey": key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": joined,
        "requestContext": _request_context(method, path, key, domain=domain, api_id=api_id or api_prefix,
                                           protocol=protocol, source_ip=source_ip,
                                           user_agent=joined.get("user-agent", ""), request_id=request_id),
        "isBase64Encoded": bool(raw) and text is None,
    }
    if cookies:
        event["cookies"] = cookies
    if query := _query_parameters(raw_query):
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if raw:  # an empty body is no body
        event["body"] = text if text is not None else base64.b64encode(raw).decode()
    if iam_identity is not None:
        event["requestContext"]["authorizer"] = {"iam": iam_identity}
    return event


def _event_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None, cookies: list[str] | None, *,
                   domain: str, user_agent: str | None, source_ip: str, port: int,
                   scheme: str) -> tuple[dict[str, str], list[str]]:
    """The event's headers (lower-case, repeats comma-joined, host and user-agent by default,
    what API Gateway adds) and its cookies (`cookies`, then the Cookie headers' pairs)."""
    joined: dict[str, str] = {}
    cookies = list(cookies or [])
    for name, value in _header_pairs(headers):
        name = name.lower()
        if name == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        else:
            joined[name] = f"{joined[name]},{value}" if name in joined else value
    joined.setdefault("host", domain)
    if user_agent is not None:
        joined.setdefault("user-agent", user_agent)
    forwarded = joined.get("x-forwarded-for")  # API Gateway appends the caller's address
    joined["x-forwarded-for"] = f"{forwarded}, {source_ip}" if forwarded else source_ip
    joined.setdefault("x-forwarded-port", str(port))
    joined.setdefault("x-forwarded-proto", scheme)
    joined["x-amzn-trace-id"] = f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"
    return joined, cookies


def _query_parameters(raw_query: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value  # repeated keys comma-joined
    return query


def _event_body(body: bytes | str | None, content_type: str | None) -> tuple[bytes | None, str | None]:
    """The raw body, and its text when HTTP API would pass it as text (else None: base64)."""
    raw = body.encode() if isinstance(body, str) else body
    if raw and is_text(content_type):
        try:
            return raw, raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return raw, None


def _request_context(method: str, path: str, key: str, *, domain: str, api_id: str, protocol: str,
                     source_ip: str, user_agent: str, request_id: str | None) -> dict:
    now = time.time()
    return {
        "accountId": ACCOUNT_ID,
        "apiId": api_id,
        "domainName": domain,
        "domainPrefix": domain.split(":")[0].split(".")[0],
        "http": {"method": method, "path": path, "protocol": protocol, "sourceIp": source_ip,
                 "userAgent": user_agent},
        "requestId": request_id or new_request_id(),
        "routeKey": key,
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }


def iam_identity(access_key: str = "AKIAIOSFODNN7EXAMPLE") -> dict:
    return {"accessKey": access_key, "accountId": ACCOUNT_ID, "callerId": "AIDAEXAMPLE",
            "cognitoIdentity": None, "principalOrgId": None,
            "userArn": f"arn:aws:iam::{ACCOUNT_ID}:user/saas-backend", "userId": "AIDAEXAMPLE"}


# -- the context -------------------------------------------------------------------------------

@dataclass
class LambdaContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:test-function"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    timeout_seconds: float = 15.0

    def __post_init__(self):
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_setting(stack, logical: str, key: str, default):
    """A function property (MemorySize, Timeout, ...): its own, else the template's Globals, else `default`."""
    props = stack.resources[logical]["Properties"]
    return props.get(key, stack.template.get("Globals", {}).get("Function", {}).get(key, default))


def lambda_context(stack, logical: str) -> LambdaContext:
    """The context Lambda passes one invocation of the template's function `logical`: its
    deployed name, memory, ARN, a new request id and its Timeout as the deadline."""
    name = f"{stack.name}-{logical}"
    return LambdaContext(function_name=name,
                         memory_limit_in_mb=int(function_setting(stack, logical, "MemorySize", 128)),
                         invoked_function_arn=f"arn:aws:lambda:{stack.region}:{ACCOUNT_ID}:function:{name}",
                         aws_request_id=str(uuid.uuid4()),
                         timeout_seconds=float(function_setting(stack, logical, "Timeout", 3)))


# -- the handler -------------------------------------------------------------------------------

def load_handler(code_uri: str, copy: int = 0):
    """Import functions/<name>/app.py under a unique module name (every handler is `app`).

    Copy 0 is the one everything shares; `copy` n > 0 is a separately imported module (its
    own Powertools `app`), as a second concurrent Lambda container has. Each copy is
    imported once per process."""
    path = ROOT / code_uri / "app.py"
    name = "handler_" + Path(code_uri).name + (f"__container{copy}" if copy else "")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class RecordingHandler:
    """Stands in for a function's app.py in tests: records every event and answers `answer`
    (a value, or a function of the event), or raises when `fail` is set."""

    def __init__(self, answer=None, fail: bool = False):
        self.events, self.answer, self.fail = [], answer, fail

    def lambda_handler(self, event, context):
        self.events.append(event)
        if self.fail:
            raise RuntimeError("boom")
        return self.answer(event) if callable(self.answer) else self.answer
