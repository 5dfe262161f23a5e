"""The hosted API-key page: GET renders the form for a connect session, POST checks the key."""

from urllib.parse import urlsplit

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths

from broker import deadline, key_page, services
from broker.connect_flow import KEY_PAGE_PATH
from broker.http_api import NO_STORE, base_url, browser_cookie, cookie_value, create_app, flow_end, request_body
from broker.observability import logger, metrics, tracer

app = create_app()


def _answer(result) -> Response:
    event = app.current_event
    connect = services.api_key_connect()
    path = urlsplit(base_url(event)).path.rstrip("/") + KEY_PAGE_PATH
    if result.location is not None:  # the flow ended: the form's secret is of no further use
        expired = browser_cookie(key_page.CSRF_COOKIE, "", path=path, max_age=0)
        return flow_end(result.location, popup=result.popup, cookies=[expired])
    cookie = browser_cookie(key_page.CSRF_COOKIE, result.cookie_secret, path=path,
                            max_age=connect.settings.flow_ttl_seconds)
    headers = {**NO_STORE, **key_page.response_headers(
        return_origins=tuple(sorted(connect.settings.allowed_return_origins)))}
    return Response(status_code=result.status, headers=headers, body=result.html, cookies=[cookie])


@app.get(KEY_PAGE_PATH)
def show_form():
    return _answer(services.api_key_connect().page(app.current_event.raw_query_string))


@app.post(KEY_PAGE_PATH)
def submit_form():
    event = app.current_event
    return _answer(services.api_key_connect().submit(
        request_body(event), cookie_secret=cookie_value(event.raw_event, key_page.CSRF_COOKIE)))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # the form carries a CSRF token
def lambda_handler(event, context):
    deadline.start(context)
    return app.resolve(event, context)
