"""Cold-start probe module: a handler's import plus what its first sampled invocation adds.

The broker's tracer loads the X-Ray SDK, builds its recorder and patches botocore and
requests on the first invocation X-Ray samples, not at import (broker.platform.observability). With
the handler's directory on sys.path and a trace header that says Sampled=1, importing this
module times both: the cold start of a traced first request."""

import os

import app  # noqa: F401 - the handler's import, as Lambda's Init phase does it

from broker.platform.observability import tracer

os.environ["_X_AMZN_TRACE_ID"] = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
assert tracer._for_this_invocation() is not None, "tracing is off: the probe would measure nothing"
