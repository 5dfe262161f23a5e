"""The Insightly proxy's building blocks: path safety, header and body shaping, the outbound
call with its retries, and the log/metric fields (the daily-quota rules are store.quota's).

Pure logic plus one outbound call over requests; no AWS. Credentials (a requests AuthBase),
the session, the clock, sleep and jitter come in as arguments, so the route can wire them
and the tests can count every call.

Path input: API Gateway HTTP API percent-decodes request parameters (and rawPath) once
before the Lambda is invoked, so `event["pathParameters"]["path"]` is already decoded;
the local gateway does the same. `safe_path` takes that value, does not decode it again,
and refuses any `%` left in it (the client double-encoded: `%252e` arrives as `%2e`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from broker.platform.errors import BrokerError, InvalidRequest, ProviderUnavailable
from broker.store.quota import retry_after_seconds

if TYPE_CHECKING:
    import requests

    from broker.credentials.insightly import Auth

# -- 1. path safety ------------------------------------------------------------------------

MAX_PATH_CHARS = 2048
# pchar characters that stay literal; everything else (space, ?, #, ;, :, non-ASCII...) is
# percent-encoded, so nothing in the path can start a query, fragment or matrix parameter.
_PATH_SAFE = "/-._~!$'()*+,=&"
_FORBIDDEN_CHARS = ("\\", "@", "%")
_DELIMITERS = set("/\\.:@%?#;")


def _refuse(reason: str) -> InvalidRequest:
    return InvalidRequest(f"the proxied path is not allowed: {reason}", code="invalid_path")


def _check_path(path: str) -> None:
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in path):
        raise _refuse("it has control characters")
    for ch in _FORBIDDEN_CHARS:
        if ch in path:
            raise _refuse(f"it has {ch!r}")
    segments = path.split("/")
    if ":" in segments[0]:
        raise _refuse("it starts with a scheme")
    for segment in segments:
        if segment == "":
            raise _refuse("it has an empty segment (leading, trailing or double slash)")
        # '..;x' is '..' to servlet containers (matrix parameters are stripped first).
        if segment.split(";", 1)[0] in (".", ".."):
            raise _refuse("it has a '.' or '..' segment")


def safe_path(raw_path_param: str) -> str:
    """The `{path+}` parameter as API Gateway delivered it (already decoded once), checked.

    Returns the path unchanged (no leading slash); `target_url` re-quotes it. Raises
    InvalidRequest `invalid_path` (400) before anything is sent. Empty segments are refused
    everywhere, including a leading or trailing slash: Insightly's paths have none, and
    `//host` is how a path turns into an authority.
    """
    if not isinstance(raw_path_param, str) or not raw_path_param:
        raise _refuse("it is empty")
    if len(raw_path_param) > MAX_PATH_CHARS:
        raise _refuse(f"it is over {MAX_PATH_CHARS} characters")
    _check_path(raw_path_param)
    # Fullwidth dots and solidi (U+FF0E, U+FF0F...) become '.' and '/' for a server that
    # normalises Unicode: no look-alike of a delimiter, and that reading checked too.
    for ch in raw_path_param:
        if not ch.isascii() and any(c in _DELIMITERS for c in unicodedata.normalize("NFKC", ch)):
            raise _refuse("it has a look-alike of a path delimiter")
    normalised = unicodedata.normalize("NFKC", raw_path_param)
    if normalised != raw_path_param:
        _check_path(normalised)
    return raw_path_param


def target_url(api_base_url: str, path: str, raw_query: str = "") -> str:
    """`api_base_url/path?query`: the host is always the connection's, the path re-quoted,
    the query as sent (only characters that could end it or break the request line are
    encoded; existing %XX sequences stay as they are)."""
    url = api_base_url.rstrip("/") + "/" + quote(safe_path(path), safe=_PATH_SAFE)
    if raw_query:
        url += "?" + quote(raw_query, safe="=&%+;,/?:@!$'()*-._~[]")
    return url


# -- 2. headers ----------------------------------------------------------------------------

REQUEST_HEADERS = ("Accept", "Accept-Language", "Content-Type", "If-Match", "If-None-Match",
                   "If-Modified-Since")
RESPONSE_HEADERS = ("Content-Type", "ETag", "Last-Modified", "Location", "Retry-After",
                    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-Total-Count")
USER_AGENT = "insightly-connect/0.1 (proxy)"
# Only encodings urllib3 always decodes: a br or zstd body could not be decompressed.
ACCEPT_ENCODING = "gzip, deflate"
_DECODED_ENCODINGS = {"", "identity", "gzip", "x-gzip", "deflate"}


def _pick(headers: Mapping[str, str] | None, allowed: tuple[str, ...]) -> dict[str, str]:
    by_name = {name.lower(): name for name in allowed}
    picked = {}
    for name, value in (headers or {}).items():
        canonical = by_name.get(str(name).lower())
        if canonical is not None and value is not None and not re.search(r"[\r\n\x00]", str(value)):
            picked[canonical] = str(value)
    return picked


def request_headers(caller_headers: Mapping[str, str] | None) -> dict[str, str]:
    """What goes to Insightly: the allow-list of the caller's headers, our User-Agent and
    Accept-Encoding. Authorization comes from the `auth` object, never from the caller."""
    return {**_pick(caller_headers, REQUEST_HEADERS), "User-Agent": USER_AGENT,
            "Accept-Encoding": ACCEPT_ENCODING}


def response_headers(upstream_headers: Mapping[str, str] | None, *, retries: int = 0) -> dict[str, str]:
    """What goes back to the caller: the allow-list only (no Set-Cookie, Transfer-Encoding,
    Connection, Content-Encoding or Content-Length: the body is decompressed and API Gateway
    sets its own length), plus X-Broker-Retries when the broker retried."""
    headers = _pick(upstream_headers, RESPONSE_HEADERS)
    if retries:
        headers["X-Broker-Retries"] = str(retries)
    return headers


# -- 3. bodies and answers -----------------------------------------------------------------

MAX_REQUEST_BODY = 6_000_000
# Lambda's synchronous response limit is 6 MB for the whole serialised result; keep a little
# room for the runtime's own framing.
MAX_LAMBDA_RESPONSE = 6 * 1024 * 1024 - 1024


class UpstreamTimeout(BrokerError):
    status = 504
    code = "provider_timeout"


def payload_too_large() -> BrokerError:
    return BrokerError(f"the request body is over {MAX_REQUEST_BODY} bytes",
                       code="payload_too_large", status=413)


def response_too_large() -> BrokerError:
    return BrokerError("Insightly's answer is too large to return through the broker; "
                       "ask for fewer records with the top and skip query parameters",
                       code="response_too_large", status=502)


def request_body(event: Mapping[str, Any]) -> bytes | None:
    """The HTTP API event's body as bytes (base64 or text), refused over 6,000,000 bytes."""
    body = event.get("body")
    if body is None or body == "":
        return None
    if not isinstance(body, str):
        raise InvalidRequest("the request body is not readable", code="invalid_body")
    if event.get("isBase64Encoded"):
        if len(body) > math.ceil(MAX_REQUEST_BODY / 3) * 4:
            raise payload_too_large()
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest("the request body is not valid base64", code="invalid_body") from exc
    else:
        data = body.encode("utf-8")
    if len(data) > MAX_REQUEST_BODY:
        raise payload_too_large()
    return data


_TEXT_TYPES = {"application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded", "application/problem+json"}


def is_text(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return (media.startswith("text/") or media in _TEXT_TYPES
            or media.endswith("+json") or media.endswith("+xml"))


@dataclass(frozen=True)
class ProxyAnswer:
    """A Lambda payload 2.0 result (use `as_lambda_result()`)."""

    status: int
    headers: dict[str, str]
    body: str
    is_base64: bool = False

    def as_lambda_result(self) -> dict[str, Any]:
        return {"statusCode": self.status, "headers": self.headers, "body": self.body,
                "isBase64Encoded": self.is_base64}


def broker_answer(error: BrokerError, *, retry_after: int | None = None,
                  headers: Mapping[str, str] | None = None) -> ProxyAnswer:
    """An answer the broker made itself: `{"error","message"}` and X-Broker-Error (and, for a
    local 429, the X-RateLimit-* values last observed)."""
    headers = {**(headers or {}), "Content-Type": "application/json", "X-Broker-Error": error.code}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return ProxyAnswer(error.status, headers, json.dumps({"error": error.code, "message": error.message}))


def _serialised_size(answer: ProxyAnswer) -> int:
    return len(json.dumps(answer.as_lambda_result()).encode("utf-8"))


READ_CHUNK = 64 * 1024


def read_limited(response: requests.Response, limit: int) -> bytes | None:
    """The decompressed body, read a chunk at a time (forward streams it); None as soon as it
    passes `limit`, the rest unread. A gzip bomb costs the limit, not what it inflates to
    (urllib3 bounds what one streamed read decompresses)."""
    body = bytearray()
    for chunk in response.iter_content(chunk_size=READ_CHUNK):
        body += chunk
        if len(body) > limit:
            response.close()
            return None
    return bytes(body)


def upstream_answer(response: requests.Response, *, retries: int = 0) -> ProxyAnswer:
    """Insightly's status, allowed headers and decompressed body: text for JSON and text
    that is UTF-8, base64 for everything else (bytes survive unchanged). A result over
    Lambda's limit is a 502 `response_too_large`, never a truncated body."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _DECODED_ENCODINGS:
        return broker_answer(BrokerError("Insightly answered with a content encoding the broker "
                                         "cannot decode", code="provider_bad_answer", status=502))
    content = read_limited(response, MAX_LAMBDA_RESPONSE)  # decompressed by urllib3 for gzip and deflate
    headers = response_headers(response.headers, retries=retries)
    if content is None:  # too large whatever the encoding: skip the work
        return broker_answer(response_too_large())
    answer = None
    if is_text(headers.get("Content-Type")):
        try:
            answer = ProxyAnswer(response.status_code, headers, content.decode("utf-8"))
        except UnicodeDecodeError:
            answer = None
    if answer is None:
        if math.ceil(len(content) / 3) * 4 > MAX_LAMBDA_RESPONSE:
            return broker_answer(response_too_large())
        answer = ProxyAnswer(response.status_code, headers, base64.b64encode(content).decode("ascii"),
                             is_base64=True)
    if _serialised_size(answer) > MAX_LAMBDA_RESPONSE:  # JSON escaping inflates text
        return broker_answer(response_too_large())
    return answer


# -- 4. the outbound call and its retries --------------------------------------------------

IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
RETRIED_STATUSES = frozenset({502, 503, 504})
MAX_ATTEMPTS = 3
BACKOFF_BASE = 0.2
BACKOFF_CAP = 2.0
CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 8.0
# Kept back from the invocation's remaining time to write state and answer.
TIME_MARGIN = 1.0
MIN_ATTEMPT_SECONDS = 0.5


def _backoff(attempt: int, jitter: Callable[[float, float], float]) -> float:
    """Capped full jitter (AWS Architecture Blog, 'Exponential Backoff And Jitter')."""
    return jitter(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))


def forward(session: requests.Session, method: str, url: str, headers: Mapping[str, str],
            body: bytes | None, auth: Auth | None, *,
            seconds_left: Callable[[], float], sleep: Callable[[float], None] = time.sleep,
            jitter: Callable[[float, float], float] = random.uniform) -> tuple[requests.Response, int]:
    """Send one proxied request; return Insightly's final response and how often it was retried.

    GET, PUT and DELETE are retried after a timeout, a connection error or a 502/503/504, at
    most MAX_ATTEMPTS attempts in all; POST and PATCH never (not safe to repeat); a 429 never.
    No attempt starts, and no wait lasts, past `seconds_left()` less TIME_MARGIN. When no
    answer came: UpstreamTimeout (504) or ProviderUnavailable (503).
    """
    import requests  # loaded already: the session is one (named here for its exceptions)

    method = method.upper()
    attempts = MAX_ATTEMPTS if method in IDEMPOTENT else 1
    for attempt in range(attempts):
        budget = seconds_left() - TIME_MARGIN
        if budget < MIN_ATTEMPT_SECONDS:
            raise UpstreamTimeout("no time left in this invocation to call Insightly")
        timeout = (min(CONNECT_TIMEOUT, budget), min(READ_TIMEOUT, budget))
        last = attempt == attempts - 1
        try:
            # Streamed: upstream_answer reads at most the Lambda limit of the body.
            response = session.request(method, url, headers=dict(headers), data=body, auth=auth,
                                       timeout=timeout, allow_redirects=False, stream=True)
        except requests.Timeout as exc:
            if last or not _wait(attempt, None, seconds_left, sleep, jitter):
                raise UpstreamTimeout("Insightly did not answer in time") from exc
            continue
        except requests.RequestException as exc:
            if last or not _wait(attempt, None, seconds_left, sleep, jitter):
                raise ProviderUnavailable("Insightly could not be reached") from exc
            continue
        if response.status_code not in RETRIED_STATUSES or last:
            return response, attempt
        retry_after = retry_after_seconds(response.headers.get("Retry-After"), time.time())
        if not _wait(attempt, retry_after, seconds_left, sleep, jitter):
            return response, attempt
        response.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _wait(attempt: int, retry_after: float | None, seconds_left: Callable[[], float],
          sleep: Callable[[float], None], jitter: Callable[[float, float], float]) -> bool:
    """Sleep before the next attempt; False when that attempt could not start in time."""
    delay = _backoff(attempt, jitter)
    if retry_after is not None:
        if retry_after > BACKOFF_CAP:
            return False  # Insightly asks for longer than we would wait: pass its answer on
        delay = max(delay, retry_after)
    if seconds_left() - TIME_MARGIN - delay < MIN_ATTEMPT_SECONDS:
        return False
    sleep(delay)
    return True


# -- 5. observability ----------------------------------------------------------------------

METRIC_STATUS = {2: "ProxyStatus2xx", 3: "ProxyStatus3xx", 4: "ProxyStatus4xx", 5: "ProxyStatus5xx"}
METRIC_BROKER_LATENCY = "ProxyBrokerLatency"        # ms spent in the broker, Insightly excluded
METRIC_INSIGHTLY_LATENCY = "ProxyInsightlyLatency"  # ms waiting for Insightly, retries included
METRIC_RETRIES = "ProxyRetries"
METRIC_LOCAL_429 = "ProxyLocal429"                # the quota guard answered 429 itself: quota used up
METRIC_QUOTA_RESERVED = "ProxyQuotaReserved"      # ... a background call, the rest is kept for interactive ones
METRIC_PROVIDER_429 = "ProxyProvider429"          # Insightly answered 429 (its quota is used up)
METRIC_401_RECOVERED = "Proxy401Recovered"
INVALID_PATH_TEMPLATE = "{invalid}"


def path_template(path: str) -> str:
    """The path with every all-digit segment replaced by {id}: one series per endpoint,
    no record ids in the logs."""
    return "/".join("{id}" if segment.isascii() and segment.isdigit() else segment
                    for segment in path.split("/"))


def log_fields(*, method: str, connection_id: str, path: str | None, status: int,
               total_ms: float, insightly_ms: float, retries: int = 0,
               answered_locally: bool = False, priority: str | None = None,
               refusal: str | None = None) -> dict[str, Any]:
    """The one log line per proxied call. Never the query string, a header or a body;
    `path` is the checked path (None when it was refused)."""
    return {
        "method": method.upper(),
        "connection_id": connection_id,
        "path": path_template(path) if path else INVALID_PATH_TEMPLATE,
        "status": status,
        "latency_ms": round(total_ms, 1),
        "insightly_ms": round(insightly_ms, 1),
        "retries": retries,
        "answered_locally": answered_locally,
        "priority": priority,  # None: the call was refused before its header was read
        "refusal": refusal,  # a local 429's reason: exhausted | reserved
    }


def metric_values(*, status: int, total_ms: float, insightly_ms: float, retries: int = 0,
                  answered_locally: bool = False, recovered_401: bool = False,
                  refusal: str | None = None) -> list[tuple[str, str, float]]:
    """(name, unit, value) for Powertools' metrics.add_metric, one call's worth."""
    values: list[tuple[str, str, float]] = []
    if status // 100 in METRIC_STATUS:
        values.append((METRIC_STATUS[status // 100], "Count", 1))
    values.append((METRIC_BROKER_LATENCY, "Milliseconds", round(max(total_ms - insightly_ms, 0.0), 1)))
    if not answered_locally:
        values.append((METRIC_INSIGHTLY_LATENCY, "Milliseconds", round(insightly_ms, 1)))
    if retries:
        values.append((METRIC_RETRIES, "Count", retries))
    if status == 429:
        values.append(((METRIC_QUOTA_RESERVED if refusal == "reserved" else METRIC_LOCAL_429)
                       if answered_locally else METRIC_PROVIDER_429, "Count", 1))
    if recovered_401:
        values.append((METRIC_401_RECOVERED, "Count", 1))
    return values
