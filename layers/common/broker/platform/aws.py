"""boto3 clients, created on first use and reused while the container is warm.

Created lazily so importing a handler costs no client set-up for routes that never use
one, and so tests can start moto before the first client exists.
"""

from __future__ import annotations

import sys
from functools import cache

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from broker.platform import deadline

# No AWS call may outlive the function (15 s; RefreshFunction 25 s, worker 30 s, scheduler
# 300 s). botocore's defaults (60 s connect and read, Powertools' Secrets Manager client
# included) would. In-region AWS answers in milliseconds, so:
#   one attempt  <= connect 1 s + read 2 s                      = 3 s (ATTEMPT_SECONDS)
#   one call     <= 2 attempts x 3 s + one backoff of <= 1 s    = 7 s, under half of 15 s
# and, because a request makes several calls in a row, no attempt starts with less than
# 3 s of the invocation left (DeadlineExceeded instead): the last one ends by the deadline.
CONNECT_TIMEOUT, READ_TIMEOUT, ATTEMPTS = 1, 2, 2
ATTEMPT_SECONDS = CONNECT_TIMEOUT + READ_TIMEOUT
MAX_BACKOFF_SECONDS = 1  # standard mode: rand(0, 1) x 2^0 before the one retry
# A kept connection for each of the scheduler's SendMessageBatch threads (scheduler.SENDERS);
# botocore's 10 would open and drop a connection (a TLS handshake) per call beyond them.
MAX_POOL_CONNECTIONS = 16
_CONFIG = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, max_pool_connections=MAX_POOL_CONNECTIONS,
                 retries={"mode": "standard", "total_max_attempts": ATTEMPTS})


class DeadlineExceeded(BotoCoreError):
    """Too little of the invocation is left to start an AWS call (or its retry)."""

    fmt = "too little time is left in this invocation for an AWS call"


def _refuse_without_time_left(**_) -> None:
    # before-send fires for every attempt, retries included; raising ends the call unretried.
    if deadline.seconds_left() < ATTEMPT_SECONDS:
        raise DeadlineExceeded()


def new_client(service: str):
    made = boto3.client(service, config=_CONFIG)
    made.meta.events.register("before-send", _refuse_without_time_left)
    return made


client = cache(new_client)  # one per service while the container is warm


def get_secret(name: str, **options):
    """parameters.get_secret, through a Secrets Manager client of this module (the one
    Powertools makes by default has botocore's 60 s timeouts). Installed as Powertools'
    default provider, so its cache and parameters.clear_caches() work as before."""
    # lazily: only the client secret is read from Secrets Manager, once per container
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    if "secrets" not in DEFAULT_PROVIDERS:
        DEFAULT_PROVIDERS["secrets"] = parameters.SecretsProvider(boto3_client=client("secretsmanager"))
    return parameters.get_secret(name, **options)


def reset() -> None:
    """Forget cached clients (tests switch endpoints and credentials between runs)."""
    client.cache_clear()
    constants = sys.modules.get("aws_lambda_powertools.utilities.parameters.constants")
    if constants is not None:  # else no provider was ever installed
        constants.DEFAULT_PROVIDERS.pop("secrets", None)
