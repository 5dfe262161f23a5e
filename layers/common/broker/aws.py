"""boto3 clients, created on first use and reused while the container is warm.

Created lazily so importing a handler costs no client set-up for routes that never use
one, and so tests can start moto before the first client exists.
"""

from __future__ import annotations

from functools import cache

import boto3
from botocore.config import Config

# Lambda's own timeouts are short; fail fast and let standard retry mode handle throttles.
_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})


@cache
def client(service: str):
    return boto3.client(service, config=_CONFIG)


def reset() -> None:
    """Forget cached clients (tests switch endpoints and credentials between runs)."""
    client.cache_clear()
