"""A local API Gateway (HTTP API, payload 2.0) in front of the real handlers, in-process.

For each request it does what API Gateway does: picks the route from template.yaml
(404 `{"message":"Not Found"}` when none matches), checks AWS SigV4 on AWS_IAM routes
(403 with API Gateway's messages), builds the payload 2.0 event, invokes the function's
real `lambda_handler` and turns the result back into an HTTP response (one `Set-Cookie`
header per entry of `cookies`, base64 bodies decoded). The `apigw-requestid` header, the
access log and the event's requestContext.requestId carry the same id. Anything that goes
wrong in the gateway itself is API Gateway's 500 `{"message":"Internal Server Error"}`.

One process, one environment: every handler runs in this process, so the functions'
environment variables are set in `os.environ` once, on `start()`, and put back on
`stop()`. That is faithful because the template gives every function the same variables
(Globals); `local_environment()` refuses a template where they differ. On top of the
template's values the local stack sets PUBLIC_BASE_URL (the gateway's URL, unless a
PublicBaseUrl is configured) and COOKIE_SECURE (false for a plain-http base URL, since a
browser or client does not send a Secure cookie back over http). `stop()` first cuts
every open connection (keep-alive ones and those with a request in progress) and waits
for their threads, then puts os.environ back: nothing is answered from the restored
environment.

Concurrency: requests are handled concurrently, as Lambda scales out. Like Lambda, each
concurrent invocation of a function gets its own "container": a separately imported copy
of the function's app.py (Powertools' resolver keeps the current event on the module's
`app` object, which must not be shared by two requests at once). The broker package and
its boto3 clients (thread-safe) are shared by all containers. So are the Powertools
Logger and Metrics, and that is NOT like Lambda: concurrent requests share one logger and
one metrics object, so keys one invocation appends (correlation id, Lambda context
fields) can appear in the log lines of another request running at the same time, and the
metrics of concurrent invocations can be mixed up or flushed by the wrong invocation. It
changes only what is printed locally, never a response; send requests one at a time when
the per-request logs matter. The function timeout is not enforced (a thread cannot be
stopped).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from local.lambda_events import (
    http_event,
    iam_identity,
    lambda_context,
    load_handler,
    match_route,
    new_request_id,
)
from local.server import ThreadedServer
from local.stack import Stack

MAX_BODY = 10 * 1024 * 1024  # HTTP API payload limit
SIGNATURE_MAX_SKEW = 300  # seconds, either way
SIGV4_FORMAT = "%Y%m%dT%H%M%SZ"

NOT_FOUND = {"message": "Not Found"}
FORBIDDEN = {"message": "Forbidden"}
INTERNAL_ERROR = {"message": "Internal Server Error"}
BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your AWS "
                 "Secret Access Key and signing method. Consult the service documentation for details.")
UNKNOWN_KEY = "The security token included in the request is invalid."
# The HTTP contract, served beside the API (a deployed API does not serve it).
OPENAPI_PATH = "/openapi.yaml"
OPENAPI_DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"


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


def canonical_query(raw_query: str) -> str:
    """The query string as SigV4 canonicalises it: every name and value decoded, then
    encoded per RFC 3986 (unreserved characters as they are, everything else %XX), sorted by
    name, then value. AWS checks the signature over this form only, whatever was sent."""
    pairs = []
    for pair in raw_query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


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
        # The Host value is signed through the header list; the URL carries only the path and
        # the canonical query (a Host header is never parsed as part of a URL).
        query = canonical_query(raw_query)
        path = raw_path if raw_path.startswith("/") else f"/{raw_path}"
        request = AWSRequest(method=method, url=f"http://localhost{path}" + (f"?{query}" if query else ""),
                             data=body)
        request.context["timestamp"] = timestamp
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, given):
            raise AccessDenied(BAD_SIGNATURE)
        return access_key

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

def build_event(route: dict, path_parameters: dict[str, str], *, method: str, raw_path: str, raw_query: str,
                headers: list[tuple[str, str]], body: bytes, source_ip: str, port: int,
                identity: dict | None = None, protocol: str = "HTTP/1.1", api_id: str = "local",
                request_id: str | None = None) -> dict:
    """The payload 2.0 event API Gateway sends for this request: `http_event` with the
    headers as sent, the path URL-decoded (HTTP API decodes it), this gateway's address as
    the domain when no Host header came and x-forwarded-* for plain http on `port`."""
    return http_event(method, unquote(raw_path), route=route, path_parameters=path_parameters or None,
                      raw_query=raw_query, headers=headers, body=body, domain=f"127.0.0.1:{port}",
                      iam_identity=identity, source_ip=source_ip, request_id=request_id, api_id=api_id,
                      protocol=protocol, user_agent=None, port=port, scheme="http")


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
            return load_handler(self.code_uri, copy=number)

    def release(self, module) -> None:
        with self._lock:
            self._idle.append(module)


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
        self._route_functions = {f"{route['method']} {route['path']}": route["function"] for route in self.routes}
        # Everything that can refuse the configuration runs before the socket is bound.
        self.env = local_environment(stack, public_base_url=f"http://{host}:{port}", extra=env)
        self._server = ThreadedServer(host, port, _GatewayHandler, name="gateway", app=self,
                                      poll_interval=0.1)
        self.host, self.port = host, self._server.port
        if self.port != port:  # port 0: the base URL is known only now
            self.env = local_environment(stack, public_base_url=self.url, extra=env)
        self._overlay = EnvironmentOverlay(self.env)
        # Called with (method, target, status, headers, body) after every answer: the e2e tests
        # check each one against docs/openapi.yaml.
        self.observer: Callable[[str, str, int, list[tuple[str, str]], bytes], None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Gateway:
        if not self._server.running:
            self._overlay.apply()
            reset_broker()
            self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and wait for them, then put os.environ back."""
        running = self._server.running
        self._server.stop()
        if running:
            self._overlay.restore()
            reset_broker()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one request -------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str,
               protocol: str = "HTTP/1.1", request_id: str | None = None,
               ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        """Status, headers, body and the route key (for the access log) for one request;
        `request_id` becomes the event's requestContext.requestId."""
        parts = urlsplit(target)
        raw_path, raw_query = parts.path or "/", parts.query
        if method in ("GET", "HEAD") and raw_path == OPENAPI_PATH:
            return 200, [("Content-Type", "application/yaml")], OPENAPI_DOCUMENT.read_bytes(), f"GET {OPENAPI_PATH}"
        found = match_route(self.routes, method, unquote(raw_path))
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
                            identity=identity, protocol=protocol, request_id=request_id)
        return (*self.invoke(route["function"], event), key)

    def access_line(self, method: str, target: str, status: int, route_key: str, started: float,
                    request_id: str) -> str:
        """One line a person reads per request: time, method, path, status, function, duration
        and the request id (also in the apigw-requestid header). Never the query string: it
        carries codes and states."""
        function = self._route_functions.get(route_key, "-")
        path = urlsplit(target).path
        took = (time.monotonic() - started) * 1000
        return (f"{time.strftime('%H:%M:%S')} {method} {path} {status} {function} {took:.0f} ms  "
                f"[{request_id}]")

    def invoke(self, logical: str, event: dict) -> tuple[int, list[tuple[str, str]], bytes]:
        pool = self._pools[logical]
        context = lambda_context(self.stack, logical)
        module = pool.acquire()
        try:
            result = module.lambda_handler(event, context)
            return http_response(result)
        except Exception:
            # What Lambda writes to the function's log: the function's own traceback.
            print(f"[gateway] {logical} failed:\n{traceback.format_exc()}", file=sys.stderr)
            return _json(500, INTERNAL_ERROR)
        finally:
            pool.release(module)


class _GatewayHandler(BaseHTTPRequestHandler):
    """One HTTP connection to the gateway: reads the request, asks the Gateway
    (`self.server.app`) for the answer, writes it, and logs one access line."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection frees its thread after this long (or on stop())
    # TCP_NODELAY: the head and the body go out in two writes; with Nagle on, the body
    # waited for the client's delayed ACK (~40 ms per request on Linux), which API
    # Gateway does not add.
    disable_nagle_algorithm = True
    server: ThreadedServer

    def _serve(self):
        gateway: Gateway = self.server.app
        request_id, started = new_request_id(), time.monotonic()
        try:
            status, headers, data, key = self._answer(gateway, request_id)
        except Exception as error:  # the gateway's own failure: API Gateway's 500, never a hang-up
            # Only the type: a traceback's values can be codes, tokens or signatures.
            print(f"[gateway] {self.command} failed in the gateway: {type(error).__name__}",
                  file=sys.stderr, flush=True)
            status, headers, data, key = *_json(500, INTERNAL_ERROR), "-"
            self.close_connection = True  # the request may not have been read to its end
        self._write(status, headers, data, request_id)
        if gateway.observer is not None:
            gateway.observer(self.command, self.path, status, headers, data)
        if gateway.access_log:
            stream = sys.stderr if gateway.access_log is True else gateway.access_log
            print(gateway.access_line(self.command, self.path, status, key, started, request_id),
                  file=stream, flush=True)

    def _answer(self, gateway: Gateway, request_id: str) -> tuple[int, list[tuple[str, str]], bytes, str]:
        try:
            body = self._read_body()
        except _TooLarge:
            self.close_connection = True
            return (*_json(413, {"message": "Request Entity Too Large"}), "-")
        except ValueError:  # a bad Content-Length or chunk size
            self.close_connection = True
            return (*_json(400, {"message": "Bad Request"}), "-")
        return gateway.handle(self.command, self.path, list(self.headers.items()), body,
                              self.client_address[0], self.request_version, request_id=request_id)

    def _write(self, status: int, headers: list[tuple[str, str]], data: bytes, request_id: str) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("apigw-requestid", request_id)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise _TooLarge
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
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

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def __getattr__(self, name):
        # Any other method (TRACE, PROPFIND, ...) is routed too: API Gateway answers its
        # 404 JSON where http.server would answer an HTML 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format, *args):  # noqa: A002 - the access log above replaces it
        pass


class _TooLarge(Exception):
    pass


def _json(status: int, body: dict) -> tuple[int, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/json")], json.dumps(body).encode()
