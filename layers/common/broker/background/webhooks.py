"""Signed webhooks: every lifecycle event POSTed to the SaaS's WebhookUrl, following the
Standard Webhooks specification (https://www.standardwebhooks.com), so a receiver verifies it
with an off-the-shelf library and never needs to learn EventBridge.

An EventBridge rule puts each event of the lifecycle bus on a queue; the delivery function
takes them from there. Headers: webhook-id (the EventBridge event id, the same on every retry,
so a receiver can drop duplicates), webhook-timestamp (of this attempt) and webhook-signature,
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` once per valid secret: during a rotation the
secret holds `current` and `previous`, and both sign.

A 2xx ends a delivery; a 4xx other than 408/429 says the receiver will never take it, so it is
dropped (logged, counted); anything else goes back to the queue with a growing delay
(RETRY_DELAYS, about 24 hours in all) and then to the dead-letter queue. The target must
resolve to public addresses only: a stack must not become a way to reach the VPC, the
instance metadata service or the operator's own network. The POST then goes to the very address
that passed the check (PinnedAddressAdapter), with TLS SNI, certificate verification and Host
for the hostname: a second lookup could answer something else (DNS rebinding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from broker.platform.observability import count, logger

SECRET_PREFIX = "whsec_"  # nosec B105  # the Standard Webhooks key prefix, no secret
# Delay after the n-th failed attempt (seconds). With the queue's maxReceiveCount of
# len(RETRY_DELAYS) + 1, the last attempt is about 23.6 hours after the first.
RETRY_DELAYS = (5, 300, 1800, 7200, 18000, 28800, 28800)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
TIMEOUT = (3.05, 5.0)  # connect, read: a receiver should answer quickly and work later
NOT_RETRIED = "dropped"
DELIVERED, RETRY, REFUSED, MALFORMED = "delivered", "retry", "refused", "malformed"


class TargetRefused(ValueError):
    """The webhook URL is not an https URL to public addresses only."""


class TargetUnresolved(TargetRefused):
    """The webhook host did not resolve (perhaps for a moment): tried again later."""


# -- signing ---------------------------------------------------------------------------------

def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64, with or without `whsec_`."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    key = base64.b64decode(raw, validate=True)
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes of key")
    return key


def signing_keys(secret_json: Mapping[str, Any]) -> list[bytes]:
    """The keys to sign with: `current`, then `previous` while a rotation overlaps."""
    if not secret_json.get("current"):
        raise ValueError("the webhook secret has no current key")
    return [secret_key(secret_json[name]) for name in ("current", "previous") if secret_json.get(name)]


def signature_header(keys: list[bytes], *, msg_id: str, timestamp: int, body: str) -> str:
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
                    for key in keys)


# -- what is sent ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    """One webhook to send: its Standard Webhooks message id and JSON body."""

    msg_id: str
    body: str


def delivery_from_event(event: Mapping[str, Any]) -> Delivery:
    """The webhook for one EventBridge event (as the rule put it on the queue)."""
    detail = event["detail"]
    if not isinstance(detail, dict) or not isinstance(event["id"], str) or not isinstance(event["detail-type"], str):
        raise ValueError("not a lifecycle event")
    payload = {**detail, "id": event["id"], "type": event["detail-type"], "tags": detail.get("tags") or {}}
    return Delivery(msg_id=event["id"], body=json.dumps(payload, separators=(",", ":"), sort_keys=True))


def outcome_of(status: int) -> str:
    if 200 <= status < 300:
        return DELIVERED
    if 400 <= status < 500 and status not in (408, 429):
        return NOT_RETRIED
    return RETRY


def retry_delay(attempt: int) -> int:
    """Seconds before the next attempt, after `attempt` (1-based) failed."""
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1]


# -- where it goes ---------------------------------------------------------------------------

Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def check_target(url: str, *, resolver: Resolver | None = None, allow_loopback: bool = False) -> list[str]:
    """Refuse a URL that is not https, or whose host resolves to any non-public address
    (private, loopback, link-local, reserved...). allow_loopback (the local stack only) lets
    http or https reach this machine. Answers the checked addresses, IPv4 first (Lambda's
    egress outside a dual-stack VPC is IPv4 only): connect to one of these, never look again."""
    parts = urlsplit(url)
    if not parts.hostname or parts.username or parts.password:
        raise TargetRefused("the webhook URL needs a host and no credentials")
    if "?" in url or "#" in url:
        # The URL is configuration (the function's environment, the stack's parameters), so it
        # may hold no secret; receivers authenticate a delivery by its signature instead.
        raise TargetRefused("the webhook URL may have no query or fragment (it is no place for a secret)")
    if not url.isascii():
        # requests would send an IDN host as its IDNA 2008 form, which is not the name checked
        # here (Python's idna codec is IDNA 2003) and not the one the pinned adapter is mounted on.
        raise TargetRefused("the webhook URL must be ASCII (write an international host as xn--...)")
    if parts.scheme != "https" and not (allow_loopback and parts.scheme == "http"):
        raise TargetRefused("the webhook URL must be https")
    try:
        addresses = (resolver or resolve)(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except OSError as exc:
        raise TargetUnresolved("the webhook host does not resolve") from exc
    if not addresses:
        raise TargetUnresolved("the webhook host does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if allow_loopback and ip.is_loopback:
            continue
        if not ip.is_global:
            raise TargetRefused("the webhook host resolves to a non-public address")
    if parts.scheme == "http" and not all(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses):
        raise TargetRefused("plain http is allowed to this machine only")
    return sorted(addresses, key=lambda a: ":" in a)


class PinnedAddressAdapter(HTTPAdapter):
    """Connects to one checked IP address while TLS (SNI and certificate verification) and
    the Host header stay those of the URL's hostname. Proxies are not used: a proxy would
    resolve the name again."""

    def __init__(self, address: str, **kwargs):
        self.address = address.split("%", 1)[0]
        super().__init__(**kwargs)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":
            # urllib3 sends this name as SNI and matches the certificate against it.
            pool_kwargs = {**pool_kwargs, "server_hostname": host_params["host"],
                           "assert_hostname": host_params["host"]}
        return self.poolmanager.connection_from_host(host=self.address, port=host_params["port"],
                                                     scheme=host_params["scheme"], pool_kwargs=pool_kwargs)

    def add_headers(self, request, **kwargs):
        request.headers["Host"] = urlsplit(request.url).netloc


# -- the delivery function ---------------------------------------------------------------------

# No generated __eq__/__repr__: nothing compares or prints it, and each generated method is an
# exec() at import, in every cold start (docs/benchmarks.md, cold start). The docstring spares
# the inspect.signature() dataclass otherwise runs to write one.
@dataclass(frozen=True, eq=False, repr=False)
class WebhookSettings:
    """Where webhooks go and which secret signs them (WEBHOOK_* variables)."""

    url: str
    secret_arn: str
    queue_url: str
    allow_loopback: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WebhookSettings:
        return cls(url=env.get("WEBHOOK_URL", ""), secret_arn=env.get("WEBHOOK_SECRET_ARN", ""),
                   queue_url=env.get("WEBHOOK_QUEUE_URL", ""),
                   allow_loopback=env.get("ALLOW_LOOPBACK_WEBHOOK", "false").lower() == "true")


class WebhookSender:
    """Delivers the queue's webhooks. Collaborators come in: the secret reader (cached by the
    caller), the SQS client (to push a failed message's next attempt out), the HTTP session,
    the resolver and the clock."""

    def __init__(self, settings: WebhookSettings, *, read_secret: Callable[[], Mapping[str, Any]], sqs,
                 session: requests.Session | None = None, resolver: Resolver | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self._read_secret = read_secret
        self._sqs = sqs
        self._session = session or requests.Session()
        self._resolver = resolver
        self._clock = clock
        self._pinned: dict[str, str] = {}  # origin -> the address its mounted adapter dials

    def _pin(self, address: str) -> None:
        """Route this URL's origin through an adapter for `address` (kept while it stays the
        same, so the warm connection is reused)."""
        parts = urlsplit(self.settings.url)
        origin = f"{parts.scheme}://{parts.netloc}/"
        if self._pinned.get(origin) != address:
            replaced = self._session.adapters.get(origin)
            self._session.mount(origin, PinnedAddressAdapter(address))
            if replaced is not None:
                replaced.close()
            self._pinned[origin] = address

    def send(self, delivery: Delivery) -> str:
        try:
            addresses = check_target(self.settings.url, resolver=self._resolver,
                                     allow_loopback=self.settings.allow_loopback)
        except TargetUnresolved:
            logger.warning("webhook host did not resolve, will retry", extra={"webhook_id": delivery.msg_id})
            return RETRY
        except TargetRefused as exc:
            logger.error("webhook target refused", extra={"webhook_id": delivery.msg_id, "reason": str(exc)})
            count("WebhooksRefused")
            return REFUSED
        self._pin(addresses[0])
        timestamp = int(self._clock())
        headers = {"content-type": "application/json", "webhook-id": delivery.msg_id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature_header(signing_keys(self._read_secret()), msg_id=delivery.msg_id,
                                                         timestamp=timestamp, body=delivery.body)}
        try:
            # No redirects: a 3xx could point anywhere, the checked address included.
            answer = self._session.post(self.settings.url, data=delivery.body.encode(), headers=headers,
                                        timeout=TIMEOUT, allow_redirects=False)
            status = answer.status_code
        except requests.RequestException as exc:
            logger.warning("webhook not delivered", extra={"webhook_id": delivery.msg_id,
                                                           "exception_type": type(exc).__name__})
            return RETRY
        outcome = outcome_of(status)
        if outcome == NOT_RETRIED:
            logger.error("webhook refused by the receiver, not retried",
                         extra={"webhook_id": delivery.msg_id, "status": status})
            count("WebhooksDropped")
        elif outcome == RETRY:
            logger.warning("webhook failed, will retry", extra={"webhook_id": delivery.msg_id, "status": status})
        return outcome

    def deliver_record(self, record: Mapping[str, Any]) -> bool:
        """True when the message is done (delivered or given up), False to retry it later."""
        try:
            delivery = delivery_from_event(json.loads(record["body"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("dropping a malformed webhook message", extra={"message_id": record.get("messageId")})
            count("WebhooksMalformed")
            return True
        outcome = self.send(delivery)
        if outcome == DELIVERED:
            count("WebhooksDelivered")
        if outcome != RETRY:
            return True
        attempt = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        count("WebhooksRetried")
        if attempt < MAX_ATTEMPTS:  # else: back at once; the next receive dead-letters it
            self._sqs.change_message_visibility(QueueUrl=self.settings.queue_url, ReceiptHandle=record["receiptHandle"],
                                                VisibilityTimeout=retry_delay(attempt))
        return False

    def deliver_batch(self, event: Mapping[str, Any]) -> dict[str, list]:
        """SQS partial batch response: the messages to try again."""
        retry = []
        for record in event.get("Records") or []:
            try:
                done = self.deliver_record(record)
            except Exception as exc:  # a fault of our own (secret unreadable...): SQS tries again
                logger.error("webhook message failed", extra={"message_id": record.get("messageId"),
                                                               "exception_type": type(exc).__name__})
                done = False
            if not done:
                retry.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": retry}

