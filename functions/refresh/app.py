"""Backend routes that hand out access tokens: on demand and forced refresh."""

from aws_lambda_powertools.logging import correlation_paths

from broker import services
from broker.http import requests_in
from broker.http.api import Routes, json_response
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

routes = Routes()


@routes.route("GET /connections/{connection_id}/token")
def get_token(event, connection_id: str):
    return json_response(200, services.token_service().access_token(requests_in.connection_id(connection_id)))


@routes.route("POST /connections/{connection_id}/refresh")
def force_refresh(event, connection_id: str):
    return json_response(200, services.token_service().force_refresh(requests_in.connection_id(connection_id)))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # responses carry access tokens
def lambda_handler(event, context):
    deadline.start(context)
    return routes.resolve(event)
