"""Webhook signing, delivery decisions and target checks (broker.background.webhooks)."""

import base64
import json

import pytest
import requests
import responses
from standardwebhooks import Webhook, WebhookVerificationError

from broker.background import webhooks
from broker.background.webhooks import (
    TargetRefused,
    WebhookSender,
    WebhookSettings,
    check_target,
    delivery_from_event,
    outcome_of,
    retry_delay,
    signature_header,
    signing_keys,
)

CURRENT = "whsec_" + base64.b64encode(b"k" * 24).decode()
PREVIOUS = base64.b64encode(b"p" * 24).decode()  # stored without the prefix, as the stack generates it
URL = "https://hooks.saas.example/in"
EVENT = {"id": "6a7e-evt", "detail-type": "NeedsReauth", "source": "insightly-connect",
         "detail": {"connection_id": "user-1", "status": "needs_reauth", "reason": "invalid_grant",
                    "tags": {"plan": "pro"}, "auth_mode": "oauth2", "at": "2026-01-01T00:00:00Z"}}


def headers_for(keys, delivery, timestamp):
    return {"webhook-id": delivery.msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(keys, msg_id=delivery.msg_id, timestamp=timestamp,
                                                  body=delivery.body)}


def test_a_signature_verifies_with_the_standardwebhooks_library_and_not_with_another_secret():
    delivery = delivery_from_event(EVENT)
    now = int(__import__("time").time())
    headers = headers_for(signing_keys({"current": CURRENT}), delivery, now)

    assert Webhook(CURRENT).verify(delivery.body, headers)["connection_id"] == "user-1"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + PREVIOUS).verify(delivery.body, headers)
    with pytest.raises(WebhookVerificationError):  # a changed body fails
        Webhook(CURRENT).verify(delivery.body.replace("user-1", "user-2"), headers)


def test_during_a_rotation_both_secrets_verify():
    delivery = delivery_from_event(EVENT)
    now = int(__import__("time").time())
    headers = headers_for(signing_keys({"current": CURRENT, "previous": PREVIOUS}), delivery, now)

    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(sig.startswith("v1,") for sig in headers["webhook-signature"].split(" "))
    for secret in (CURRENT, "whsec_" + PREVIOUS):  # receivers on the old and on the new secret
        Webhook(secret).verify(delivery.body, headers)


def test_a_secret_without_a_current_key_or_too_short_is_refused():
    with pytest.raises(ValueError):
        signing_keys({"previous": PREVIOUS})
    with pytest.raises(ValueError):
        signing_keys({"current": base64.b64encode(b"short").decode()})


def test_the_body_is_the_detail_plus_id_type_tags_and_auth_mode():
    body = json.loads(delivery_from_event(EVENT).body)
    assert body == {**EVENT["detail"], "id": "6a7e-evt", "type": "NeedsReauth"}
    no_tags = json.loads(delivery_from_event({**EVENT, "detail": {"connection_id": "c", "status": "active"}}).body)
    assert no_tags["tags"] == {} and "auth_mode" not in no_tags


@pytest.mark.parametrize("status,outcome", [
    (200, "delivered"), (204, "delivered"), (400, "dropped"), (401, "dropped"), (404, "dropped"), (410, "dropped"),
    (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry"), (301, "retry"), (100, "retry"),
])
def test_which_answers_end_drop_or_retry(status, outcome):
    assert outcome_of(status) == outcome


def test_retry_delays_grow():
    delays = [retry_delay(n) for n in range(1, webhooks.MAX_ATTEMPTS)]
    assert delays == sorted(delays) and delays[0] <= 10


def public(host, port):
    return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]


@pytest.mark.parametrize("addresses", [
    ["10.1.2.3"], ["172.16.0.1"], ["192.168.1.1"], ["127.0.0.1"], ["169.254.169.254"], ["::1"], ["fe80::1%eth0"],
    ["fd00::1"], ["0.0.0.0"], ["100.64.0.1"], ["::ffff:10.0.0.1"],
    ["93.184.215.14", "10.0.0.1"],  # one private address among public ones is enough to refuse
])
def test_a_target_resolving_to_any_non_public_address_is_refused(addresses):
    with pytest.raises(TargetRefused):
        check_target(URL, resolver=lambda host, port: addresses)


def test_a_public_https_target_passes_and_http_or_credentials_do_not():
    check_target(URL, resolver=public)
    for url in ("http://hooks.saas.example/in", "https://user:pw@hooks.saas.example/in", "https:///in"):
        with pytest.raises(TargetRefused):
            check_target(url, resolver=public)


@pytest.mark.parametrize("url", ["https://hooks.saas.example/in?token=s3cret", "https://hooks.saas.example/in?",
                                 "https://hooks.saas.example/in#s3cret"])
def test_a_target_with_a_query_or_fragment_is_refused_since_the_url_is_no_place_for_a_secret(url):
    # It is configuration, in the function's environment (second security review, F9).
    with pytest.raises(TargetRefused, match="query"):
        check_target(url, resolver=public)


def test_an_international_host_is_refused_since_it_would_be_sent_under_another_name():
    # checked as faß -> fass (IDNA 2003), sent by requests as xn--fa-hia (IDNA 2008) past the pin
    looked_up = []
    with pytest.raises(TargetRefused, match="ASCII"):
        check_target("https://faß.example/hook",
                     resolver=lambda host, port: looked_up.append(host) or ["93.184.215.14"])
    assert looked_up == []
    check_target("https://xn--fa-hia.example/hook", resolver=public)  # the ASCII form is fine


def test_loopback_only_when_allowed_for_the_local_stack():
    loopback = lambda host, port: ["127.0.0.1"]  # noqa: E731
    check_target("http://localhost:8090/hooks", resolver=loopback, allow_loopback=True)
    with pytest.raises(TargetRefused):
        check_target("http://localhost:8090/hooks", resolver=loopback)
    with pytest.raises(TargetRefused):  # still no private network, and no plain http out
        check_target("https://x.internal/", resolver=lambda h, p: ["10.0.0.1"], allow_loopback=True)
    with pytest.raises(TargetRefused):
        check_target("http://hooks.saas.example/", resolver=public, allow_loopback=True)


def test_a_host_that_does_not_resolve_is_tried_again_later():
    def fails(host, port):
        raise OSError("no such host")
    with pytest.raises(TargetRefused):
        check_target(URL, resolver=fails)
    sqs = FakeSqs()
    unresolved = WebhookSender(WebhookSettings(url=URL, secret_arn="arn", queue_url="q"), sqs=sqs,
                               read_secret=lambda: {"current": CURRENT}, resolver=fails)
    assert unresolved.deliver_batch({"Records": [record(1)]})["batchItemFailures"] == [{"itemIdentifier": "m1"}]
    assert sqs.visibility == [retry_delay(1)]


class FakeSqs:
    def __init__(self):
        self.visibility = []

    def change_message_visibility(self, **kwargs):
        self.visibility.append(kwargs["VisibilityTimeout"])


def record(receive_count=1, body=None):
    return {"messageId": "m1", "receiptHandle": "rh", "body": body or json.dumps(EVENT),
            "attributes": {"ApproximateReceiveCount": str(receive_count)}}


def sender(sqs):
    return WebhookSender(WebhookSettings(url=URL, secret_arn="arn", queue_url="q"), sqs=sqs,
                         read_secret=lambda: {"current": CURRENT}, resolver=public, session=requests.Session())


@responses.activate
def test_a_failed_attempt_comes_back_after_its_backoff_and_the_last_goes_to_the_dead_letter_queue():
    responses.add(responses.POST, URL, status=503)
    sqs = FakeSqs()
    assert sender(sqs).deliver_batch({"Records": [record(3)]}) == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert sqs.visibility == [retry_delay(3)]
    # the last attempt: no new delay, the next receive moves it to the DLQ (maxReceiveCount)
    assert sender(sqs).deliver_batch({"Records": [record(webhooks.MAX_ATTEMPTS)]})["batchItemFailures"]
    assert sqs.visibility == [retry_delay(3)]


@responses.activate
def test_a_connection_error_is_retried_and_a_malformed_message_is_dropped():
    responses.add(responses.POST, URL, body=requests.ConnectionError("reset"))
    sqs = FakeSqs()
    assert sender(sqs).deliver_batch({"Records": [record(1)]})["batchItemFailures"] == [{"itemIdentifier": "m1"}]
    assert sender(sqs).deliver_batch({"Records": [record(1, body="not json")]}) == {"batchItemFailures": []}
    assert sender(sqs).deliver_batch({"Records": [record(1, body='{"id": 1}')]}) == {"batchItemFailures": []}


@responses.activate
def test_a_redirect_is_not_followed():
    responses.add(responses.POST, URL, status=302, headers={"Location": "http://169.254.169.254/latest"})
    assert sender(FakeSqs()).deliver_batch({"Records": [record(1)]})["batchItemFailures"]
    assert len(responses.calls) == 1


# -- DNS rebinding: the delivery connects to the address that passed the check ---------------

@pytest.fixture
def loopback_listener():
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_a_host_rebinding_to_loopback_after_the_check_gets_no_connection(monkeypatch, loopback_listener):
    """The check sees a public address; the resolver then answers 127.0.0.1 (DNS rebinding).
    The delivery must go to the checked address, never to the listener on loopback."""
    import socket

    import urllib3.util.connection

    port, accepted = loopback_listener
    real_getaddrinfo, real_connect = socket.getaddrinfo, urllib3.util.connection.create_connection
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real_getaddrinfo(
        "127.0.0.1" if host == "hooks.rebind.example" else host, *a, **k))
    dialled = []

    def create_connection(address, *args, **kwargs):  # no internet in tests: only loopback is dialled
        dialled.append(address[0])
        if address[0] not in ("127.0.0.1", "localhost", "hooks.rebind.example"):
            raise OSError("tests never reach the internet")
        return real_connect(address, *args, **kwargs)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)

    settings = WebhookSettings(url=f"https://hooks.rebind.example:{port}/in", secret_arn="arn", queue_url="q")
    hook = WebhookSender(settings, sqs=FakeSqs(), read_secret=lambda: {"current": CURRENT},
                         resolver=lambda host, port: ["93.184.215.14"], session=requests.Session())

    assert hook.deliver_batch({"Records": [record(1)]})["batchItemFailures"]  # not delivered: retried
    assert accepted == [] and dialled == ["93.184.215.14"]


def _tls_receiver(tmp_path, certificate_name):
    """An HTTPS receiver on 127.0.0.1 whose certificate (self-signed, the CA the client is
    given) is for `certificate_name`; it records the SNI and Host of each request."""
    import datetime
    import http.server
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certificate_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(certificate_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    seen = {"sni": [], "host": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen["host"].append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sock, server_name, ctx: seen["sni"].append(server_name)
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, str(cert_file), seen


@pytest.mark.parametrize("certificate_name, delivered", [("hooks.saas.test", True), ("other.saas.test", False)])
def test_the_pinned_connection_keeps_sni_certificate_check_and_host_of_the_hostname(tmp_path, certificate_name,
                                                                                     delivered):
    server, ca_file, seen = _tls_receiver(tmp_path, certificate_name)
    try:
        port = server.server_address[1]
        session = requests.Session()
        session.verify, session.trust_env = ca_file, False  # else REQUESTS_CA_BUNDLE wins over verify
        settings = WebhookSettings(url=f"https://hooks.saas.test:{port}/in", secret_arn="arn", queue_url="q",
                                   allow_loopback=True)
        hook = WebhookSender(settings, sqs=FakeSqs(), read_secret=lambda: {"current": CURRENT},
                             resolver=lambda host, port: ["127.0.0.1"], session=session)
        failures = hook.deliver_batch({"Records": [record(1)]})["batchItemFailures"]
    finally:
        server.shutdown()
        server.server_close()
    assert seen["sni"] == ["hooks.saas.test"]
    if delivered:
        assert failures == [] and seen["host"] == [f"hooks.saas.test:{port}"]
    else:  # a certificate for another name is refused, as without pinning
        assert failures and seen["host"] == []
