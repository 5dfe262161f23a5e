"""HTTP shape shared by the handlers: route dispatch on the payload 2.0 routeKey, the error
mapping, redirects and cookies.

API Gateway has already matched the route (template.yaml) and put its key in the event's
`routeKey` ("GET /connections/{connection_id}"), with the path parameters beside it. So a
function needs a dict lookup, not a resolver: Powertools' event_handler and its event data
classes cost about a quarter of a boto3 import at cold start (docs/benchmarks.md) for
matching API Gateway already did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools.shared.cookies import Cookie, SameSite

from broker.http import requests_in
from broker.platform.config import settings
from broker.platform.errors import BrokerError, ConfigurationError, ProviderUnavailable
from broker.platform.observability import logger

# The browser-facing paths and the cookies the connect flows set: the handlers scope each
# cookie to its path, and the flows build their redirect URLs from the same names.
CALLBACK_PATH = "/oauth/callback"
KEY_PAGE_PATH = "/connect/api-key"
BROWSER_COOKIE = "ic_oauth_browser"
KEY_PAGE_COOKIE = "ic_key_page"

# Tokens pass through these responses: nothing may cache them, nothing may leak a Referer.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}


class Response:
    """One HTTP API answer, as the payload 2.0 Lambda result API Gateway turns into a response."""

    __slots__ = ("status", "headers", "body", "cookies")

    def __init__(self, status: int, headers: dict[str, str] | None = None, body: str | None = None,
                 cookies: list[Cookie] | None = None):
        self.status = status
        self.headers = dict(headers or {})
        self.body = body
        self.cookies = cookies or []

    def as_lambda_result(self) -> dict[str, Any]:
        return {"statusCode": self.status, "body": self.body, "isBase64Encoded": False,
                "headers": self.headers, "cookies": [str(cookie) for cookie in self.cookies]}


def json_response(status: int, body: Any | None = None, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {**NO_STORE, **(headers or {}), "Content-Type": "application/json"},
                    json.dumps(body) if body is not None else None)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": code, "message": message}, headers)


def redirect(location: str, cookies: list[Cookie] | None = None) -> Response:
    return Response(302, {**NO_STORE, "Location": location}, cookies=cookies)


def flow_end(location: str, *, popup: bool, cookies: list[Cookie]) -> Response:
    """The last answer of a connect flow: a 302 to return_to, or for display=popup the page
    that posts the same outcome to window.opener (and redirects when there is none)."""
    if not popup:
        return redirect(location, cookies=cookies)
    from broker.http.popup import render  # lazily: only the flow's last pages need it

    page, headers = render(location)
    return Response(200, {**NO_STORE, **headers}, page, cookies)


def error_answer(exc: Exception) -> Response:
    """Every error, expected or not, as a JSON error without internals."""
    if isinstance(exc, ConfigurationError):
        # Callers learn nothing about the deployment; the operator's log names the setting.
        logger.error("the broker is misconfigured", extra={"error": exc.code, "detail": exc.message})
        return error_response(exc.status, exc.code, "the broker is misconfigured")
    if isinstance(exc, BrokerError):
        headers = {}
        if isinstance(exc, ProviderUnavailable) and exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status >= 500:
            logger.warning("request failed", extra={"error": exc.code})
        return error_response(exc.status, exc.code, exc.message, headers)
    # The type only: exception text from a library may quote what it was given.
    logger.error("unexpected error", extra={"exception_type": type(exc).__name__})
    return error_response(500, "internal_error", "the broker hit an unexpected error")


RouteHandler = Callable[..., Response]


class Routes:
    """A function's routes by routeKey. Each handler takes the event and the route's path
    parameters as keyword arguments, and returns a Response or raises."""

    def __init__(self) -> None:
        self.handlers: dict[str, RouteHandler] = {}

    def route(self, route_key: str) -> Callable[[RouteHandler], RouteHandler]:
        """Register a handler for a route key exactly as template.yaml spells it."""
        def register(handler: RouteHandler) -> RouteHandler:
            self.handlers[route_key] = handler
            return handler
        return register

    def resolve(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            handler = self.handlers.get(event.get("routeKey", ""))
            if handler is None:
                return error_response(404, "route_not_found", "no such route").as_lambda_result()
            parameters = event.get("pathParameters") or {}
            for name, value in parameters.items():
                # API Gateway routes a control character in a path parameter: that parameter is
                # malformed (400), whatever the route would make of it.
                if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
                    return error_response(400, f"invalid_{name}", f"the {name} is malformed").as_lambda_result()
            return handler(event, **parameters).as_lambda_result()
        except Exception as exc:  # noqa: BLE001 - every error is answered as JSON, never raised to the runtime
            return error_answer(exc).as_lambda_result()


def raw_query(event: dict[str, Any]) -> str:
    return event.get("rawQueryString") or ""


def request_body(event: dict[str, Any]) -> str | None:
    """The request's body as text, for every JSON route (a base64 body that is not UTF-8 is
    the route's 400, not a 500)."""
    return requests_in.body_text(event.get("body"), base64_encoded=bool(event.get("isBase64Encoded")))


def base_url(event: dict[str, Any]) -> str:
    """The public URL of this API: the configured one, or this stack's own (never the Host)."""
    return settings().public_url(event["requestContext"].get("apiId", ""))


def browser_cookie(name: str, value: str, *, path: str, max_age: int) -> Cookie:
    return Cookie(name=name, value=value, path=path, secure=settings().cookie_secure,
                  http_only=True, same_site=SameSite.LAX_MODE, max_age=max_age)


def cookie_value(event: dict[str, Any], name: str) -> str | None:
    found = None
    for raw in event.get("cookies") or []:
        key, _, value = raw.strip().partition("=")
        if key == name:
            if found is not None:
                return None  # two cookies of the same name: trust neither
            found = value
    return found


def callback_path(event: dict[str, Any]) -> str:
    """The callback's path under the public URL: the browser cookie is scoped to it."""
    return urlsplit(base_url(event)).path.rstrip("/") + CALLBACK_PATH
