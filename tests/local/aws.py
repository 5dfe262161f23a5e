"""Local AWS: moto in server mode, in this process, with the template's resources in it.

The resources come from template.yaml itself (`Stack.provision`), plus the SQS queues a
queue event source would need, so the local stack never drifts from what `sam deploy`
creates. Everything runs in threads of the calling process: nothing to clean up but
`stop()`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

from tests.support.fake_provider import FakeInsightly
from tests.support.stack import Stack

DEFAULT_PORT = 5000


class MotoServer:
    """moto's server mode on a loopback port (0 or None: any free port).

    moto keeps its data in module globals of this process, so a server starts empty and
    its data is wiped when it stops (do not run it at the same time as `mock_aws`)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT, quiet: bool = True):
        self.host = host
        if quiet:  # moto's werkzeug server logs every request on stderr otherwise
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = _ThreadedServer(ip_address=host, port=port or 0, verbose=False)
        self._running = False

    def start(self) -> MotoServer:
        if not self._running:
            _reset_moto()
            self._server.start()
            if self._server.error is not None:
                raise self._server.error
            self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._server.stop()
            self._running = False
            _reset_moto()

    @property
    def port(self) -> int:
        return self._server.get_host_and_port()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _ThreadedServer(ThreadedMotoServer):
    """ThreadedMotoServer that reports a failed bind instead of waiting for it forever."""

    error: OSError | None = None

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except BaseException as exc:  # werkzeug exits (SystemExit) when the port is taken
            self.error = exc if isinstance(exc, OSError) else OSError(
                errno.EADDRINUSE, f"moto server could not listen on {self._ip_address}:{self._port}")
            self._server_ready_event.set()


def _reset_moto() -> None:
    from moto.moto_api import _internal

    _internal.moto_api_backend.reset()


def session_for(endpoint_url: str | None = None, region: str = "us-east-1") -> _EndpointSession:
    """A boto3 session for the local AWS. Credentials are moto's (any value is accepted);
    the endpoint is `endpoint_url`, else AWS_ENDPOINT_URL, else an error (never real AWS)."""
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint_url:
        raise RuntimeError("no local AWS endpoint: pass endpoint_url or set AWS_ENDPOINT_URL")
    session = boto3.Session(aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
                            aws_session_token=os.environ.get("AWS_SESSION_TOKEN"),
                            region_name=region)
    return _EndpointSession(session, endpoint_url)


class _EndpointSession:
    """A boto3 session whose clients all go to one endpoint (what Stack.provision needs)."""

    def __init__(self, session: boto3.Session, endpoint_url: str):
        self._session = session
        self.endpoint_url = endpoint_url
        self.region_name = session.region_name

    def client(self, service: str, **kwargs):
        kwargs.setdefault("endpoint_url", self.endpoint_url)
        return self._session.client(service, **kwargs)

    def resource(self, service: str, **kwargs):
        kwargs.setdefault("endpoint_url", self.endpoint_url)
        return self._session.resource(service, **kwargs)


def client_credentials() -> tuple[str, str]:
    """OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET, else the stand-in's (FakeInsightly's) defaults."""
    defaults = FakeInsightly()
    return (os.environ.get("OAUTH_CLIENT_ID") or defaults.client_id,
            os.environ.get("OAUTH_CLIENT_SECRET") or defaults.client_secret)


def put_client_credentials(stack: Stack, session, client_id: str, client_secret: str) -> bool:
    """What a deployer does after `sam deploy`: fill the secret the template created.
    False when the template created none (ExistingClientSecretArn was given)."""
    secrets = [logical for logical in stack.of_type("AWS::SecretsManager::Secret") if logical in stack.refs]
    for logical in secrets:
        session.client("secretsmanager").put_secret_value(
            SecretId=stack.refs[logical],
            SecretString=json.dumps({"client_id": client_id, "client_secret": client_secret}))
    return bool(secrets)


@dataclass
class LocalAws:
    server: MotoServer
    stack: Stack
    session: object

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()


def start_local_aws(stack: Stack | None = None, *, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT,
                    client_id: str | None = None, client_secret: str | None = None) -> LocalAws:
    """Start moto, provision `stack` (default: the template with its defaults) into it and
    put the OAuth client credentials into its secret."""
    stack = stack or Stack()
    server = MotoServer(host, port).start()
    try:
        session = session_for(server.url, stack.region)
        stack.provision(session)
        default_id, default_secret = client_credentials()
        put_client_credentials(stack, session, client_id or default_id, client_secret or default_secret)
    except BaseException:
        server.stop()
        raise
    return LocalAws(server, stack, session)
