"""The hosted API-key page: GET renders the form for a connect session, POST checks the key."""

from urllib.parse import urlsplit

from aws_lambda_powertools.logging import correlation_paths

from broker import services
from broker.http.api import (
    KEY_PAGE_COOKIE,
    KEY_PAGE_PATH,
    NO_STORE,
    Response,
    Routes,
    base_url,
    browser_cookie,
    cookie_value,
    flow_end,
    raw_query,
    request_body,
)
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

services.load_key_page()  # every invocation shows or checks the key form

routes = Routes()


def _answer(event, result) -> Response:
    connect = services.api_key_connect()
    path = urlsplit(base_url(event)).path.rstrip("/") + KEY_PAGE_PATH
    if result.location is not None:  # the flow ended: the form's secret is of no further use
        expired = browser_cookie(KEY_PAGE_COOKIE, "", path=path, max_age=0)
        return flow_end(result.location, popup=result.popup, cookies=[expired])
    cookie = browser_cookie(KEY_PAGE_COOKIE, result.cookie_secret, path=path,
                            max_age=connect.settings.flow_ttl_seconds)
    headers = {**NO_STORE, **connect.page_headers()}
    return Response(result.status, headers, result.html, [cookie])


@routes.route(f"GET {KEY_PAGE_PATH}")
def show_form(event):
    return _answer(event, services.api_key_connect().page(raw_query(event)))


@routes.route(f"POST {KEY_PAGE_PATH}")
def submit_form(event):
    return _answer(event, services.api_key_connect().submit(
        request_body(event), cookie_secret=cookie_value(event, KEY_PAGE_COOKIE)))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # the form carries a CSRF token
def lambda_handler(event, context):
    deadline.start(context)
    return routes.resolve(event)
