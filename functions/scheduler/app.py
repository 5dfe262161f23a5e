"""The EventBridge schedule: refresh every connection whose due time has passed."""

import time

from broker import services
from broker.config import settings
from broker.observability import logger, metrics, tracer
from broker.scheduler import run_due_refreshes


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    tokens = services.token_service()
    outcomes = run_due_refreshes(
        tokens.connections, tokens, shards=settings().due_index_shards, now=int(time.time()),
        seconds_left=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    return {"outcomes": outcomes}
