"""One Logger, Tracer and Metrics for the whole package (Powertools keeps them per process).

Every handler pins log_event=False: an event carries state, code, session and cookie, so
POWERTOOLS_LOGGER_LOG_EVENT=true must not log it.

Logger and Metrics read their service and namespace from the environment when they are
made. They are made at first use, not when this module is imported: whatever imports the
broker before a function's environment is in place (the local stack does, to check its
webhook secret) would otherwise fix `service_undefined` and no namespace for good, and
every metric flush would then fail."""

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider
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


class MadeAtFirstUse:
    """Stands for the object `make()` returns, made on the first attribute read."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None
        self._guard = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        made = self._made
        if made is None:
            with self._guard:
                if self._made is None:
                    self._made = self._make()
                made = self._made
        return getattr(made, name)

    def forget(self) -> None:
        """The next use makes a new one, from the environment as it is then."""
        with self._guard:
            self._made = None


class ClearingEMFProvider(AmazonCloudWatchEMFProvider):
    """Powertools' EMF provider, except that it reads a namespace and service it was not given
    at the invocation that needs them, and that a flush that fails clears what it could not write.

    A handler's `log_metrics` decorator holds on to the provider it was decorated with, so one
    made before the function's environment was in place would otherwise flush without a
    namespace for the life of the process. And Powertools clears the metric set only after a
    successful flush, while Lambda keeps the process after an exception escapes a handler: the
    unwritten metrics would go into every later flush of the container and fail each one (a
    missing namespace once turned every answer of every function into a 500). The failing
    invocation still raises."""

    def _settle(self) -> None:
        self.namespace = self.namespace or os.environ.get("POWERTOOLS_METRICS_NAMESPACE")
        self.service = self.service or os.environ.get("POWERTOOLS_SERVICE_NAME")

    def add_cold_start_metric(self, context: Any) -> None:
        self._settle()
        super().add_cold_start_metric(context)

    def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
        self._settle()
        try:
            super().flush_metrics(raise_on_empty_metrics=raise_on_empty_metrics)
        except Exception:
            self.clear_metrics()
            raise


def _make_metrics() -> Metrics:
    # The same process-wide sets Metrics() shares between its instances, behind our provider.
    return Metrics(provider=ClearingEMFProvider(
        metric_set=Metrics._metrics, dimension_set=Metrics._dimensions, metadata_set=Metrics._metadata,
        default_dimensions=Metrics._default_dimensions))


logger: Logger = MadeAtFirstUse(Logger)  # type: ignore[assignment]
tracer = LazyTracer()
metrics: Metrics = MadeAtFirstUse(_make_metrics)  # type: ignore[assignment]


def reset() -> None:
    """Make Logger and Metrics again at their next use (the local stack and tests, after
    they change the functions' environment)."""
    logger.forget()  # type: ignore[attr-defined]
    metrics.forget()  # type: ignore[attr-defined]


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
