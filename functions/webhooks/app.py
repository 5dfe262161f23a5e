"""Webhook delivery: POSTs each lifecycle event the bus put on the webhook queue to
WebhookUrl, signed per Standard Webhooks (see broker.background.webhooks for retries and refusals)."""

import requests  # noqa: F401 - loaded in Init, not by the first request: every message is a delivery

from broker import services
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

services.load_webhooks()  # every invocation delivers


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    deadline.start(context)
    return services.webhook_sender().deliver_batch(event)
