"""Webhook delivery: POSTs each lifecycle event the bus put on the webhook queue to
WebhookUrl, signed per Standard Webhooks (see broker.background.webhooks for retries and refusals)."""

import requests

from broker.background.webhooks import WebhookSender, WebhookSettings
from broker.platform import aws, deadline
from broker.platform.observability import logger, metrics, tracer

SECRET_CACHE_SECONDS = 60  # a rotated secret signs within a minute
_session = requests.Session()  # kept warm: the receiver's connection is reused


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    deadline.start(context)
    settings = WebhookSettings.from_env()
    sender = WebhookSender(
        settings, sqs=aws.client("sqs"), session=_session,
        read_secret=lambda: aws.get_secret(settings.secret_arn, transform="json", max_age=SECRET_CACHE_SECONDS))
    return sender.deliver_batch(event)
