"""GET /oauth/callback: the provider sends the browser back with a code (or an error)."""

import requests  # noqa: F401 - loaded in Init, not by the first request: every callback exchanges a code
from aws_lambda_powertools.logging import correlation_paths

from broker import services
from broker.http.api import (
    BROWSER_COOKIE,
    Routes,
    base_url,
    browser_cookie,
    callback_path,
    cookie_value,
    flow_end,
    raw_query,
)
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

services.load_connect_flow()  # every invocation finishes one

routes = Routes()


@routes.route("GET /oauth/callback")
def callback(event):
    result = services.connect_flow().complete_callback(
        raw_query(event),
        browser_secret=cookie_value(event, BROWSER_COOKIE),
        base_url=base_url(event),
    )
    # The state is spent: the browser's secret is of no further use.
    expired = browser_cookie(BROWSER_COOKIE, "", path=callback_path(event), max_age=0)
    return flow_end(result.location, popup=result.popup, cookies=[expired])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    deadline.start(context)
    return routes.resolve(event)
