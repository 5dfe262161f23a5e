"""ANY /connections/{connection_id}/proxy/{path+}: the SaaS backend calls Insightly through the
broker. No resolver: every method and any path go to the one proxy, which shapes the answer."""

import requests  # noqa: F401 - loaded in Init, not by the first request: every call goes on to Insightly
from aws_lambda_powertools.logging import correlation_paths

from broker import services
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

services.load_proxy()  # the same: every invocation is proxied


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)  # answers carry CRM data
def lambda_handler(event, context):
    deadline.start(context)
    connection_id = (event.get("pathParameters") or {}).get("connection_id", "")
    return services.insightly_proxy().call(connection_id, event).as_lambda_result()
