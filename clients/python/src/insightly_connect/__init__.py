"""Insightly Connect's backend client: every backend route, SigV4-signed, with typed errors.

    from insightly_connect import Broker
    broker = Broker("https://abc123.execute-api.eu-west-1.amazonaws.com")
    session = broker.create_connect_session("user-42", "https://app.example.com/insightly")
"""

from insightly_connect import webhooks
from insightly_connect.client import Broker, ProxySession
from insightly_connect.errors import (
    AccessDeniedError,
    ApiKeyRejectedError,
    BadRequestError,
    BrokerError,
    ClientRejectedError,
    ConflictError,
    NeedsReauthError,
    NotFoundError,
    QuotaExhaustedError,
    QuotaReservedError,
    ServerError,
    UnavailableError,
)
from insightly_connect.models import Connection, ConnectSession, Token

__all__ = [
    "AccessDeniedError", "ApiKeyRejectedError", "BadRequestError", "Broker", "BrokerError", "ClientRejectedError",
    "ConflictError", "Connection", "ConnectSession", "NeedsReauthError", "NotFoundError", "ProxySession",
    "QuotaExhaustedError", "QuotaReservedError", "ServerError", "Token", "UnavailableError", "webhooks",
]
