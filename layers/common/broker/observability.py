"""One Logger, Tracer and Metrics for the whole package (Powertools keeps them per process).

Every handler pins log_event=False: an event carries state, code, session and cookie, so
POWERTOOLS_LOGGER_LOG_EVENT=true must not log it."""

import logging

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

# At DEBUG (e.g. Lambda's ApplicationLogLevel=DEBUG sets the root logger) these log every
# request and response body: the client secret, KMS plaintexts, sealed token sets. They stay
# at INFO whatever the root level; their INFO and above carry no bodies.
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "requests")
for _name in QUIET_LIBRARIES:
    logging.getLogger(_name).setLevel(logging.INFO)

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
