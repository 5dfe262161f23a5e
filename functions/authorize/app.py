"""GET /oauth/authorize: the browser brings a connect session and is sent on to the provider."""

from aws_lambda_powertools.logging import correlation_paths

from broker import services
from broker.http.api import BROWSER_COOKIE, Routes, base_url, browser_cookie, callback_path, raw_query, redirect
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

services.load_connect_flow()  # every invocation starts a flow

routes = Routes()


@routes.route("GET /oauth/authorize")
def authorize(event):
    flow = services.connect_flow()
    result = flow.begin_authorization(raw_query(event), base_url=base_url(event))
    cookie = browser_cookie(BROWSER_COOKIE, result.browser_secret, path=callback_path(event),
                            max_age=flow.settings.flow_ttl_seconds)
    return redirect(result.location, cookies=[cookie])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # the response sets a browser secret
def lambda_handler(event, context):
    deadline.start(context)
    return routes.resolve(event)
