"""Backend routes for connect sessions and connections (IAM-signed calls from the SaaS)."""

import time

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths

from broker import deadline, labels, requests_in, services
from broker.http_api import NO_STORE, base_url, create_app, json_response, request_body
from broker.observability import logger, metrics, tracer

app = create_app()


@app.post("/connect-sessions")
def create_connect_session():
    event = app.current_event
    session = services.connect_flow().create_session(request_body(event), base_url=base_url(event))
    return json_response(201, session)


@app.post("/connect-sessions/<session_id>/complete")
def complete_connect_session(session_id: str):
    connection = services.connect_flow().complete_session(session_id, request_body(app.current_event))
    return json_response(200, services.token_service().status_of(connection))


@app.get("/connections")
def list_connections():
    return json_response(200, services.connection_listing().page(app.current_event.raw_query_string))


@app.get("/connections/<connection_id>")
def get_connection(connection_id: str):
    return json_response(200, services.token_service().status(requests_in.connection_id(connection_id)))


@app.put("/connections/<connection_id>/api-key")
def put_api_key(connection_id: str):
    connection = services.api_key_connect().connect_from_backend(connection_id, request_body(app.current_event))
    return json_response(200, services.token_service().status_of(connection))


@app.patch("/connections/<connection_id>")
def patch_connection(connection_id: str):
    connection = labels.update_labels(services.token_service().connections, connection_id,
                                      request_body(app.current_event), now=int(time.time()))
    return json_response(200, services.token_service().status_of(connection))


@app.delete("/connections/<connection_id>")
def delete_connection(connection_id: str):
    services.token_service().delete(requests_in.connection_id(connection_id))
    return Response(status_code=204, headers=NO_STORE)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # the response carries a connect URL
def lambda_handler(event, context):
    deadline.start(context)
    return app.resolve(event, context)
