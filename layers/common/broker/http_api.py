"""HTTP shape shared by the handlers: the resolver, error mapping, redirects and cookies."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.shared.cookies import Cookie, SameSite

from . import requests_in
from .config import settings
from .errors import BrokerError, ConfigurationError, ProviderUnavailable
from .observability import logger

# Tokens pass through these responses: nothing may cache them, nothing may leak a Referer.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}


def json_response(status: int, body: Any | None = None, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type="application/json",
                    body=json.dumps(body) if body is not None else None,
                    headers={**NO_STORE, **(headers or {})})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"error": code, "message": message}, headers)


def redirect(location: str, cookies: list[Cookie] | None = None) -> Response:
    return Response(status_code=302, headers={**NO_STORE, "Location": location}, cookies=cookies or [])


def flow_end(location: str, *, popup: bool, cookies: list[Cookie]) -> Response:
    """The last answer of a connect flow: a 302 to return_to, or for display=popup the page
    that posts the same outcome to window.opener (and redirects when there is none)."""
    if not popup:
        return redirect(location, cookies=cookies)
    from .popup import render  # lazily: only the flow's last pages need it

    page, headers = render(location)
    return Response(status_code=200, headers={**NO_STORE, **headers}, body=page, cookies=cookies)


def create_app() -> APIGatewayHttpResolver:
    """A resolver whose every error, expected or not, is a JSON error without internals."""
    app = APIGatewayHttpResolver()

    @app.exception_handler(BrokerError)
    def _domain_error(exc: BrokerError) -> Response:
        if isinstance(exc, ConfigurationError):
            # Callers learn nothing about the deployment; the operator's log names the setting.
            logger.error("the broker is misconfigured", extra={"error": exc.code, "detail": exc.message})
            return error_response(exc.status, exc.code, "the broker is misconfigured")
        headers = {}
        if isinstance(exc, ProviderUnavailable) and exc.retry_after:
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status >= 500:
            logger.warning("request failed", extra={"error": exc.code})
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.not_found
    def _no_route(exc: Exception) -> Response:
        # API Gateway routed it here, but the resolver's patterns refuse a control character
        # in a path parameter: that parameter is malformed (400), the route exists.
        parameters = app.current_event.path_parameters or {}
        if parameters:
            name = sorted(parameters)[0]
            return error_response(400, f"invalid_{name}", f"the {name} is malformed")
        return error_response(404, "route_not_found", "no such route")

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The type only: exception text from a library may quote what it was given.
        logger.error("unexpected error", extra={"exception_type": type(exc).__name__})
        return error_response(500, "internal_error", "the broker hit an unexpected error")

    return app


def request_body(event) -> str | None:
    """The request's body as text, for every JSON route (instead of Powertools' decoded_body,
    which fails with a 500 on a base64 body that is not UTF-8)."""
    return requests_in.body_text(event.get("body"), base64_encoded=bool(event.get("isBase64Encoded")))


def base_url(event) -> str:
    """The public URL of this API: the configured one, or this stack's own (never the Host)."""
    return settings().public_url(event.request_context.api_id)


def browser_cookie(name: str, value: str, *, path: str, max_age: int) -> Cookie:
    return Cookie(name=name, value=value, path=path, secure=settings().cookie_secure,
                  http_only=True, same_site=SameSite.LAX_MODE, max_age=max_age)


def cookie_value(event, name: str) -> str | None:
    found = None
    for raw in event.get("cookies") or []:
        key, _, value = raw.strip().partition("=")
        if key == name:
            if found is not None:
                return None  # two cookies of the same name: trust neither
            found = value
    return found


def callback_path(event) -> str:
    """The callback's path under the public URL: the browser cookie is scoped to it."""
    from .connect_flow import CALLBACK_PATH  # lazily: the token routes never load the connect flow

    return urlsplit(base_url(event)).path.rstrip("/") + CALLBACK_PATH
