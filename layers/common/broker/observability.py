"""One Logger, Tracer and Metrics for the whole package (Powertools keeps them per process).

Every handler pins log_event=False: an event carries state, code, session and cookie, so
POWERTOOLS_LOGGER_LOG_EVENT=true must not log it."""

import functools
import logging
import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.tracing import tracer as powertools_tracing

# At DEBUG (e.g. Lambda's ApplicationLogLevel=DEBUG sets the root logger) these log every
# request and response body: the client secret, KMS plaintexts, sealed token sets. They stay
# at INFO whatever the root level; their INFO and above carry no bodies.
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "requests")
for _name in QUIET_LIBRARIES:
    logging.getLogger(_name).setLevel(logging.INFO)

# The two clients the broker calls out with: AWS (botocore) and Insightly (requests). Not
# Powertools' default patch_all, which also imports and patches sqlite3, httplib (a second
# subsegment under every requests and botocore call) and whatever else is installed.
TRACED_LIBRARIES = ("botocore", "requests")


class LazyTracer:
    """Powertools' Tracer, created on the first invocation that X-Ray samples.

    Importing the X-Ray SDK, building its recorder and patching botocore and requests was the
    largest share of a handler's import after boto3 (docs/benchmarks.md, cold start). An
    invocation that is not traced gets nothing from it: with tracing disabled
    (POWERTOOLS_TRACE_DISABLED, or outside Lambda: tests, the local stack) it is never
    loaded, and in Lambda an invocation whose trace header says Sampled=0 runs untraced
    until one is sampled (botocore itself still passes the trace header on to AWS). The
    patches are made on classes, so clients created before are traced from then on."""

    def __init__(self) -> None:
        self._tracer: Tracer | None = None
        self._invoked = False

    def get(self) -> Tracer | None:
        """The Powertools Tracer once tracing started, else None."""
        return self._tracer

    def _for_this_invocation(self) -> Tracer | None:
        if self._tracer is None and not Tracer._is_tracer_disabled() and _sampled():
            if self._invoked:  # Powertools would annotate the first traced call as the cold start
                powertools_tracing.is_cold_start = False
            self._tracer = Tracer(patch_modules=TRACED_LIBRARIES)
        self._invoked = True
        return self._tracer

    def capture_lambda_handler(self, lambda_handler=None, *, capture_response: bool | None = None,
                               capture_error: bool | None = None):
        """Powertools' capture_lambda_handler, applied from the first traced invocation on."""
        if lambda_handler is None:
            return functools.partial(self.capture_lambda_handler, capture_response=capture_response,
                                     capture_error=capture_error)
        traced_handler = None

        @functools.wraps(lambda_handler)
        def handler(event, context):
            nonlocal traced_handler
            tracer = self._for_this_invocation()
            if tracer is None:
                return lambda_handler(event, context)
            if traced_handler is None:
                traced_handler = tracer.capture_lambda_handler(
                    lambda_handler, capture_response=capture_response, capture_error=capture_error)
            return traced_handler(event, context)

        handler.traced_by = __name__
        return handler


def _sampled() -> bool:
    # The runtime sets the invocation's trace header; without one (or without a decision in
    # it) Powertools' Tracer is made, as before.
    return "Sampled=0" not in os.environ.get("_X_AMZN_TRACE_ID", "").split(";")


logger = Logger()
tracer = LazyTracer()
metrics = Metrics()


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
