"""The EventBridge schedule: enqueue every connection whose refresh is due."""

from broker import services
from broker.platform import deadline
from broker.platform.observability import logger, metrics, tracer

services.load_scheduler()  # every invocation is a scheduled run


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    deadline.start(context)
    return services.scheduled_run(context.aws_request_id)
