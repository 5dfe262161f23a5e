"""Backend routes for connect sessions and connections (IAM-signed calls from the SaaS)."""

from aws_lambda_powertools.logging import correlation_paths

from broker import services
from broker.http import requests_in
from broker.http.api import NO_STORE, Response, Routes, base_url, json_response, raw_query, request_body
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

routes = Routes()


@routes.route("POST /connect-sessions")
def create_connect_session(event):
    session = services.connect_flow().create_session(request_body(event), base_url=base_url(event))
    return json_response(201, session)


@routes.route("POST /connect-sessions/{session_id}/complete")
def complete_connect_session(event, session_id: str):
    connection = services.connect_flow().complete_session(session_id, request_body(event))
    return json_response(200, services.token_service().status_of(connection))


@routes.route("GET /connections")
def list_connections(event):
    return json_response(200, services.connection_listing().page(raw_query(event)))


@routes.route("GET /connections/{connection_id}")
def get_connection(event, connection_id: str):
    return json_response(200, services.token_service().status(requests_in.connection_id(connection_id)))


@routes.route("PUT /connections/{connection_id}/api-key")
def put_api_key(event, connection_id: str):
    connection = services.api_key_connect().connect_from_backend(connection_id, request_body(event))
    return json_response(200, services.token_service().status_of(connection))


@routes.route("PATCH /connections/{connection_id}")
def patch_connection(event, connection_id: str):
    connection = services.update_connection(connection_id, request_body(event))
    return json_response(200, services.token_service().status_of(connection))


@routes.route("DELETE /connections/{connection_id}")
def delete_connection(event, connection_id: str):
    services.token_service().delete(requests_in.connection_id(connection_id))
    return Response(204, NO_STORE)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # the response carries a connect URL
def lambda_handler(event, context):
    deadline.start(context)
    return routes.resolve(event)
