"""HTTP API (payload 2.0) events and Lambda contexts, shaped as API Gateway sends them."""

from __future__ import annotations

import base64
import importlib.util
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from .stack import ROOT

API_DOMAIN = "abc123defg.execute-api.us-east-1.amazonaws.com"


def route_key(method: str, template_path: str) -> str:
    return f"{method} {template_path}"


def match_route(routes: list[dict], method: str, path: str) -> tuple[dict, dict[str, str]] | None:
    for route in routes:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(route["path"]))
        found = re.fullmatch(pattern, path)
        if found and route["method"] == method:
            return route, found.groupdict()
    return None


def http_event(method: str, path: str, *, route: dict, path_parameters: dict[str, str] | None = None,
               raw_query: str = "", headers: dict[str, str] | None = None, cookies: list[str] | None = None,
               body: bytes | str | None = None, domain: str = API_DOMAIN, iam_identity: dict | None = None,
               source_ip: str = "203.0.113.10") -> dict:
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        # API Gateway joins repeated parameters with commas.
        query[key] = f"{query[key]},{value}" if key in query else value
    is_b64 = False
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError:
            body, is_b64 = base64.b64encode(body).decode(), True
    now = time.time()
    event = {
        "version": "2.0",
        "routeKey": route_key(method, route["path"]),
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": {"host": domain, "user-agent": "pytest", **headers},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                     "userAgent": headers.get("user-agent", "pytest")},
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key(method, route["path"]),
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": is_b64,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if body is not None:
        event["body"] = body
    if iam_identity is not None:
        event["requestContext"]["authorizer"] = {"iam": iam_identity}
    return event


def iam_identity(access_key: str = "AKIAIOSFODNN7EXAMPLE") -> dict:
    return {"accessKey": access_key, "accountId": "123456789012", "callerId": "AIDAEXAMPLE",
            "cognitoIdentity": None, "principalOrgId": None,
            "userArn": "arn:aws:iam::123456789012:user/saas-backend", "userId": "AIDAEXAMPLE"}


@dataclass
class LambdaContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    timeout_seconds: float = 15.0

    def __post_init__(self):
        self._deadline = time.monotonic() + self.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(code_uri: str):
    """Import functions/<name>/app.py under a unique module name (every handler is `app`)."""
    path = ROOT / code_uri / "app.py"
    name = "handler_" + Path(code_uri).name
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
