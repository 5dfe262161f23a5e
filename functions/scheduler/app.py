"""The EventBridge schedule: enqueue every connection whose refresh is due."""

import time

from broker import services
from broker.background.scheduler import enqueue_due, one_run_at_a_time
from broker.platform import aws, deadline
from broker.platform.config import settings
from broker.platform.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    deadline.start(context)
    cfg, flow = settings(), services.connect_flow()

    def run():
        enqueued = enqueue_due(services.token_service().connections, aws.client("sqs"), cfg.refresh_queue_url,
                               shards=cfg.due_index_shards, now=int(time.time()), seconds_left=deadline.seconds_left)
        # Session binding: revoke and delete the pending completions nobody completed in time.
        flow.sweep_expired_completions(seconds_left=deadline.seconds_left)
        return enqueued

    return one_run_at_a_time(flow.flows, context.aws_request_id, run, now=int(time.time()),
                             seconds_left=deadline.seconds_left)
