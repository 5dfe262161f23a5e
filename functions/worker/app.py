"""The refresh worker: refreshes the connections the scheduler put on the queue.

A refresh's own outcome (refreshed, failed and cooled down, needs re-auth) is stored on the
connection, so its message is done either way. Only a fault of the broker's own services
fails the message, which SQS then redelivers and, after five tries, dead-letters.
"""

import json

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from broker import deadline, requests_in, services
from broker.errors import InvalidRequest
from broker.observability import count, logger, metrics, tracer

# Every failed record is reported, even when all of them failed (no whole-invocation error).
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def refresh_one(record: SQSRecord) -> str:
    try:
        connection_id = requests_in.connection_id(json.loads(record.body).get("connection_id"))
    except (ValueError, AttributeError, InvalidRequest):
        logger.warning("dropping a malformed refresh message", extra={"message_id": record.message_id})
        return "malformed"
    outcome = services.token_service().refresh_if_due(connection_id)
    count(f"Worker{outcome.title().replace('_', '')}")
    return outcome


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event, context):
    deadline.start(context)
    return process_partial_response(event=event, record_handler=refresh_one, processor=processor, context=context)
