"""The refresh worker: refreshes the connections the scheduler put on the queue.

A refresh's own outcome (refreshed, failed and cooled down, needs re-auth) is stored on the
connection, so its message is done either way. Only a fault of the broker's own services, or
too little time left to start a refresh, fails the message, which SQS then redelivers and,
after five tries, dead-letters.
"""

import requests  # noqa: F401 - loaded in Init, not by the first request: every message is a refresh

from broker import services
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

services.load_worker()  # every invocation is a batch of refreshes


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    deadline.start(context)
    return services.refresh_batch(event)
