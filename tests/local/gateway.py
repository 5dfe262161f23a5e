"""A local API Gateway (HTTP API, payload 2.0) in front of the real handlers, in-process.

For each request it does what API Gateway does: picks the route from template.yaml
(404 `{"message":"Not Found"}` when none matches), checks AWS SigV4 on AWS_IAM routes
(403 with API Gateway's messages), builds the payload 2.0 event, invokes the function's
real `lambda_handler` and turns the result back into an HTTP response (one `Set-Cookie`
header per entry of `cookies`, base64 bodies decoded).

One process, one environment: every handler runs in this process, so the functions'
environment variables are set in `os.environ` once, on `start()`, and put back on
`stop()`. That is faithful because the template gives every function the same variables
(Globals); `local_environment()` refuses a template where they differ. On top of the
template's values the local stack sets PUBLIC_BASE_URL (the gateway's URL, unless a
PublicBaseUrl is configured) and COOKIE_SECURE (false for a plain-http base URL, since a
browser or client does not send a Secure cookie back over http).

Concurrency: requests are handled concurrently, as Lambda scales out. Like Lambda, each
concurrent invocation of a function gets its own "container": a separately imported copy
of the function's app.py (Powertools' resolver keeps the current event on the module's
`app` object, which must not be shared by two requests at once). The broker package, its
boto3 clients and the Powertools logger/metrics are shared by all containers; boto3
clients are thread-safe, and the logger/metrics only affect what is printed locally.
The function timeout is not enforced (a thread cannot be stopped).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import importlib.util
import json
import os
import re
import secrets
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from tests.support.lambda_events import LambdaContext, http_event, iam_identity, load_handler
from tests.support.stack import ACCOUNT_ID, ROOT, Stack

MAX_BODY = 10 * 1024 * 1024  # HTTP API payload limit
SIGNATURE_MAX_SKEW = 300  # seconds, either way
SIGV4_FORMAT = "%Y%m%dT%H%M%SZ"

NOT_FOUND = {"message": "Not Found"}
FORBIDDEN = {"message": "Forbidden"}
BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your AWS "
                 "Secret Access Key and signing method. Consult the service documentation for details.")
UNKNOWN_KEY = "The security token included in the request is invalid."

# Bodies API Gateway hands over as text; anything else arrives base64-encoded.
_TEXT_TYPES = re.compile(r"^(text/.*|application/(json|xml|javascript|[\w.+-]+\+(json|xml)))$")


# -- environment -------------------------------------------------------------------------------

def local_environment(stack: Stack, *, public_base_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The one environment all in-process functions share: the template's (identical for
    every function through Globals), the local base URL and cookie flag, then `extra`."""
    merged: dict[str, str] = {}
    for logical in stack.of_type("AWS::Serverless::Function"):
        for key, value in stack.function_environment(logical).items():
            if key in merged and merged[key] != value:
                raise ValueError(f"functions disagree on {key}: the in-process local stack runs every function "
                                 "in one process and needs one environment")
            merged[key] = value
    if not merged.get("PUBLIC_BASE_URL"):
        merged["PUBLIC_BASE_URL"] = public_base_url.rstrip("/")
    merged["COOKIE_SECURE"] = "true" if merged["PUBLIC_BASE_URL"].startswith("https://") else "false"
    merged.update(extra or {})
    return merged


class EnvironmentOverlay:
    """Sets variables in os.environ and puts the previous values back (stop in reverse order)."""

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)
        self._saved: dict[str, str | None] | None = None

    def apply(self) -> None:
        if self._saved is None:
            self._saved = {key: os.environ.get(key) for key in self.env}
            os.environ.update(self.env)

    def restore(self) -> None:
        if self._saved is not None:
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved = None


def reset_broker() -> None:
    """Forget the broker's settings, object graph, boto3 clients and cached secret, so the
    next invocation reads the current environment (endpoint, table names, ...)."""
    from aws_lambda_powertools.utilities import parameters

    from broker import services

    services.reset()
    parameters.clear_caches()


# -- routes --------------------------------------------------------------------------------------

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


def match(routes: list[dict], method: str, path: str) -> tuple[dict, dict[str, str]] | None:
    """The route API Gateway would pick: exact method (or ANY), most specific path first
    (literal segments beat parameters, which beat greedy parameters), then $default."""
    def specificity(route):
        path = route["path"]
        return ("+}" in path, path.count("{"), -len(path))

    candidates = sorted((r for r in routes if r["path"] != "$default"), key=specificity)
    for route in candidates:
        if route["method"] not in (method, "ANY"):
            continue
        found = _route_pattern(route["path"]).fullmatch(path)
        if found:
            return route, found.groupdict()
    for route in routes:
        if route["path"] == "$default":
            return route, {}
    return None


# -- SigV4 -----------------------------------------------------------------------------------

class AccessDenied(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _Recompute(SigV4Auth):
    """botocore's SigV4 over exactly the headers the caller says it signed, with the payload
    hash computed from the body actually received."""

    def __init__(self, credentials, service, region, signed: list[tuple[str, list[str]]]):
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request):
        headers = HTTPHeaders()
        for name, values in self._signed:
            for value in values:
                headers[name] = value
        return headers

    def payload(self, request):
        return hashlib.sha256(request.body or b"").hexdigest()


def _normalized_query(raw_query: str) -> str:
    pairs = []
    for pair in raw_query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            pairs.append(f"{quote(unquote(key), safe='-_.~')}={quote(unquote(value), safe='-_.~')}")
    return "&".join(pairs)


class SigV4Verifier:
    """Checks `Authorization: AWS4-HMAC-SHA256 ...` as API Gateway's IAM authorizer does."""

    def __init__(self, credentials: Mapping[str, str], region: str, service: str = "execute-api",
                 max_skew: int = SIGNATURE_MAX_SKEW):
        self.credentials = dict(credentials)
        self.region = region
        self.service = service
        self.max_skew = max_skew

    def verify(self, method: str, raw_path: str, raw_query: str, headers: list[tuple[str, str]], body: bytes,
               now: float | None = None) -> str:
        """The caller's access key, or AccessDenied with API Gateway's message."""
        values: dict[str, list[str]] = {}
        for name, value in headers:
            values.setdefault(name.lower(), []).append(value)
        authorization = (values.get("authorization") or [""])[0].strip()
        if not authorization:
            raise AccessDenied(FORBIDDEN["message"])
        algorithm, _, rest = authorization.partition(" ")
        fields = {}
        for part in rest.split(","):
            key, _, value = part.strip().partition("=")
            fields[key] = value
        missing = [f"Authorization header requires '{name}' parameter."
                   for name in ("Credential", "Signature", "SignedHeaders") if not fields.get(name)]
        timestamp = self._timestamp(values)
        if timestamp is None:
            missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        if algorithm != "AWS4-HMAC-SHA256" or missing:
            raise AccessDenied(" ".join(missing) or FORBIDDEN["message"])

        scope = fields["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise AccessDenied("Credential should be scoped to a valid region. ")
        access_key, date, region, service, _ = scope
        if region != self.region:
            raise AccessDenied(f"Credential should be scoped to a valid region, not '{region}'. ")
        if service != self.service:
            raise AccessDenied(f"Credential should be scoped to correct service: '{self.service}'. ")
        if date != timestamp[:8]:
            raise AccessDenied(f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                               f"from HTTP: '{date}' != '{timestamp[:8]}', from 'X-Amz-Date'.")
        signed_names = [n.strip().lower() for n in fields["SignedHeaders"].split(";") if n.strip()]
        if "host" not in signed_names:
            raise AccessDenied("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        self._check_clock(timestamp, now if now is not None else time.time())
        secret = self.credentials.get(access_key)
        if secret is None:
            raise AccessDenied(UNKNOWN_KEY)
        declared = (values.get("x-amz-content-sha256") or [None])[0]
        if declared is not None and declared != hashlib.sha256(body).hexdigest():
            raise AccessDenied(BAD_SIGNATURE)

        signed = [(name, values.get(name, [])) for name in signed_names]
        signer = _Recompute(Credentials(access_key, secret), self.service, self.region, signed)
        given = fields["Signature"].strip()
        host = (values.get("host") or ["localhost"])[0]
        # botocore signs the query as sent; other SDKs canonicalise it: accept either form.
        for query in dict.fromkeys((raw_query, _normalized_query(raw_query))):
            request = AWSRequest(method=method, url=f"http://{host}{raw_path}" + (f"?{query}" if query else ""),
                                 data=body)
            request.context["timestamp"] = timestamp
            canonical = signer.canonical_request(request)
            expected = signer.signature(signer.string_to_sign(request, canonical), request)
            if hmac.compare_digest(expected, given):
                return access_key
        raise AccessDenied(BAD_SIGNATURE)

    @staticmethod
    def _timestamp(values: dict[str, list[str]]) -> str | None:
        amz = (values.get("x-amz-date") or [""])[0].strip()
        if amz:
            try:
                dt.datetime.strptime(amz, SIGV4_FORMAT)
            except ValueError:
                return None
            return amz
        date = (values.get("date") or [""])[0].strip()
        if date:
            from email.utils import parsedate_to_datetime
            try:
                return parsedate_to_datetime(date).astimezone(dt.UTC).strftime(SIGV4_FORMAT)
            except (TypeError, ValueError):
                return None
        return None

    def _check_clock(self, timestamp: str, now: float) -> None:
        signed_at = dt.datetime.strptime(timestamp, SIGV4_FORMAT).replace(tzinfo=dt.UTC)
        current = dt.datetime.fromtimestamp(now, dt.UTC)
        skew = dt.timedelta(seconds=self.max_skew)
        minutes = self.max_skew // 60
        if signed_at < current - skew:
            raise AccessDenied(f"Signature expired: {timestamp} is now earlier than "
                               f"{(current - skew).strftime(SIGV4_FORMAT)} "
                               f"({current.strftime(SIGV4_FORMAT)} - {minutes} min.)")
        if signed_at > current + skew:
            raise AccessDenied(f"Signature not yet current: {timestamp} is still later than "
                               f"{(current + skew).strftime(SIGV4_FORMAT)} "
                               f"({current.strftime(SIGV4_FORMAT)} + {minutes} min.)")


# -- event and response translation ---------------------------------------------------------

def is_text(content_type: str | None) -> bool:
    return bool(content_type) and bool(_TEXT_TYPES.match(content_type.split(";")[0].strip().lower()))


def build_event(route: dict, path_parameters: dict[str, str], *, method: str, raw_path: str, raw_query: str,
                headers: list[tuple[str, str]], body: bytes, source_ip: str, port: int,
                identity: dict | None = None, protocol: str = "HTTP/1.1", api_id: str = "local") -> dict:
    """The payload 2.0 event API Gateway sends for this request.

    Headers are lower-cased and repeated ones joined with commas; the Cookie header becomes
    the `cookies` array; rawQueryString is as sent, queryStringParameters decoded with
    repeated keys comma-joined; rawPath and pathParameters are URL-decoded (HTTP API decodes
    the path); a body that is not text (by Content-Type) arrives base64-encoded."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        name = name.lower()
        if name == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        else:
            joined[name] = f"{joined[name]},{value}" if name in joined else value
    host = joined.get("host", f"127.0.0.1:{port}")
    joined.setdefault("host", host)
    joined.setdefault("x-forwarded-for", source_ip)
    joined.setdefault("x-forwarded-port", str(port))
    joined.setdefault("x-forwarded-proto", "http")
    joined["x-amzn-trace-id"] = f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"

    text_body = None
    if body and is_text(joined.get("content-type")):
        try:
            text_body = body.decode("utf-8")
        except UnicodeDecodeError:
            text_body = None
    event = http_event(method, unquote(raw_path), route=route, path_parameters=path_parameters or None,
                       raw_query=raw_query, headers=joined, cookies=cookies or None,
                       body=text_body, domain=host, iam_identity=identity, source_ip=source_ip)
    if body and text_body is None:
        event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    if "user-agent" not in joined:
        event["headers"].pop("user-agent", None)
    context = event["requestContext"]
    context["apiId"] = api_id
    context["domainPrefix"] = host.split(":")[0].split(".")[0]
    context["http"]["protocol"] = protocol
    context["http"]["userAgent"] = joined.get("user-agent", "")
    if route["path"] == "$default":
        event["routeKey"] = context["routeKey"] = "$default"
    return event


def http_response(result) -> tuple[int, list[tuple[str, str]], bytes]:
    """A payload 2.0 Lambda result as status, headers (one Set-Cookie per cookie) and body."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # API Gateway's inference for a result without statusCode: 200, JSON.
        body = result if isinstance(result, str) else json.dumps(result)
        return 200, [("Content-Type", "application/json")], body.encode()
    status = int(result["statusCode"])
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
    body = result.get("body")
    if body is None:
        data = b""
    elif result.get("isBase64Encoded"):
        data = base64.b64decode(body)
    else:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
    return status, headers, data


# -- "containers" --------------------------------------------------------------------------------

class _FunctionPool:
    """Warm copies of one function's app.py; a busy one is never handed to a second request."""

    def __init__(self, code_uri: str):
        self.code_uri = code_uri
        self._idle: list = []
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
            number, self._count = self._count, self._count + 1
            return load_handler(self.code_uri) if number == 0 else self._fresh(number)

    def release(self, module) -> None:
        with self._lock:
            self._idle.append(module)

    def _fresh(self, number: int):
        path = ROOT / self.code_uri / "app.py"
        name = f"handler_{Path(self.code_uri).name}__container{number}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


# -- the server ------------------------------------------------------------------------------

class Gateway:
    """HTTP API in front of the template's functions. `credentials` maps access key id to
    secret key for SigV4; `env` is added on top of the template's function environment."""

    def __init__(self, stack: Stack, host: str = "127.0.0.1", port: int = 3000,
                 credentials: Mapping[str, str] | None = None, region: str = "us-east-1",
                 env: Mapping[str, str] | None = None, access_log: object = True):
        self.stack = stack
        self.region = region
        self.routes = stack.http_routes()
        unsupported = {r["auth"] for r in self.routes} - {"AWS_IAM", "NONE"}
        if unsupported:  # never serve a protected route unprotected
            raise NotImplementedError(f"the local gateway cannot check authorizers {sorted(unsupported)}")
        self.verifier = SigV4Verifier(credentials if credentials is not None else {"testing": "testing"}, region)
        self.access_log = access_log
        self._pools = {route["function"]: _FunctionPool(route["code_uri"]) for route in self.routes}
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self.env = local_environment(stack, public_base_url=self.url, extra=env)
        self._overlay = EnvironmentOverlay(self.env)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Gateway:
        if self._thread is None:
            self._overlay.apply()
            reset_broker()
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="gateway", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
            self._overlay.restore()
            reset_broker()
        self._server.server_close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one request -------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str,
               protocol: str = "HTTP/1.1") -> tuple[int, list[tuple[str, str]], bytes, str]:
        """Status, headers, body and the route key (for the access log) for one request."""
        parts = urlsplit(target)
        raw_path, raw_query = parts.path or "/", parts.query
        found = match(self.routes, method, unquote(raw_path))
        if found is None:
            return (*_json(404, NOT_FOUND), "-")
        route, params = found
        key = f"{route['method']} {route['path']}"
        identity = None
        if route["auth"] == "AWS_IAM":
            try:
                access_key = self.verifier.verify(method, raw_path, raw_query, headers, body)
            except AccessDenied as denied:
                return (*_json(403, {"message": denied.message}), key)
            identity = iam_identity(access_key)
        event = build_event(route, params, method=method, raw_path=raw_path, raw_query=raw_query,
                            headers=headers, body=body, source_ip=source_ip, port=self.port,
                            identity=identity, protocol=protocol)
        return (*self.invoke(route["function"], event), key)

    def invoke(self, logical: str, event: dict) -> tuple[int, list[tuple[str, str]], bytes]:
        pool = self._pools[logical]
        props = self.stack.resources[logical]["Properties"]
        defaults = self.stack.template.get("Globals", {}).get("Function", {})
        name = f"{self.stack.name}-{logical}"
        context = LambdaContext(
            function_name=name, memory_limit_in_mb=int(props.get("MemorySize", defaults.get("MemorySize", 128))),
            invoked_function_arn=f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}",
            aws_request_id=str(uuid.uuid4()),
            timeout_seconds=float(props.get("Timeout", defaults.get("Timeout", 3))))
        module = pool.acquire()
        try:
            result = module.lambda_handler(event, context)
            return http_response(result)
        except Exception:
            print(f"[gateway] {logical} failed:\n{traceback.format_exc()}", file=sys.stderr)
            return _json(500, {"message": "Internal Server Error"})
        finally:
            pool.release(module)

    def _handler_class(self):
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def _serve(self):
                request_id = base64.b32encode(secrets.token_bytes(10)).decode().rstrip("=")
                try:
                    body = self._read_body()
                except _TooLarge:
                    status, headers, data, key = *_json(413, {"message": "Request Entity Too Large"}), "-"
                    self.close_connection = True
                except (ValueError, binascii.Error):
                    status, headers, data, key = *_json(400, {"message": "Bad Request"}), "-"
                    self.close_connection = True
                else:
                    status, headers, data, key = gateway.handle(self.command, self.path, list(self.headers.items()),
                                                                body, self.client_address[0], self.request_version)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("apigw-requestid", request_id)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                if gateway.access_log:
                    # Like the template's access log: never the query string (codes, states).
                    stream = sys.stderr if gateway.access_log is True else gateway.access_log
                    print(json.dumps({"requestId": request_id, "ip": self.client_address[0], "routeKey": key,
                                      "status": str(status)}), file=stream, flush=True)

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks, size = [], 0
                    while True:
                        length = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if length == 0:
                            while self.rfile.readline().strip():
                                pass  # trailers
                            return b"".join(chunks)
                        size += length
                        if size > MAX_BODY:
                            raise _TooLarge
                        chunks.append(self.rfile.read(length))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise _TooLarge
                return self.rfile.read(length) if length > 0 else b""

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format, *args):  # noqa: A002 - the access log above replaces it
                pass

        return Handler


class _TooLarge(Exception):
    pass


def _json(status: int, body: dict) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps(body).encode()
