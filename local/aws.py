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
from collections.abc import Mapping

import boto3
from moto.server import ThreadedMotoServer

from local import moto_atomic
from local.fake_insightly import FakeInsightly
from local.stack import Stack

DEFAULT_PORT = 5000

moto_atomic.install()  # the server answers in threads: give them DynamoDB's atomic conditional writes


class MotoServer:
    """moto's server mode on a loopback port (0 or None: any free port).

    moto keeps its data in module globals of this process, so a server starts empty and
    its data is wiped when it stops (do not run it at the same time as `mock_aws`)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT, quiet: bool = True):
        self.host = host
        self.quiet = quiet
        self._server = _ThreadedServer(ip_address=host, port=port or 0, verbose=False)
        self._running = False
        self._log_level: int | None = None

    def start(self) -> MotoServer:
        if not self._running:
            if self.quiet:  # moto's werkzeug server logs every request on stderr otherwise; stop() puts it back
                werkzeug = logging.getLogger("werkzeug")
                self._log_level = werkzeug.level
                werkzeug.setLevel(logging.WARNING)
            _reset_moto()
            self._server.start()
            if self._server.error is not None:
                self._restore_log_level()
                raise self._server.error
            self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._server.stop()
            self._running = False
            _reset_moto()
            self._restore_log_level()

    def _restore_log_level(self) -> None:
        if self._log_level is not None:
            logging.getLogger("werkzeug").setLevel(self._log_level)
            self._log_level = None

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


def client_credentials(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET from `environ` (default os.environ), else the
    stand-in's (FakeInsightly's) defaults."""
    env = os.environ if environ is None else environ
    defaults = FakeInsightly()
    return (env.get("OAUTH_CLIENT_ID") or defaults.client_id,
            env.get("OAUTH_CLIENT_SECRET") or defaults.client_secret)


def put_client_credentials(stack: Stack, session, client_id: str, client_secret: str) -> bool:
    """What a deployer does after `sam deploy`: fill the secret the template created.
    False when the template created none (ExistingClientSecretArn was given)."""
    secrets = [logical for logical in stack.of_type("AWS::SecretsManager::Secret") if logical in stack.refs]
    for logical in secrets:
        session.client("secretsmanager").put_secret_value(
            SecretId=stack.refs[logical],
            SecretString=json.dumps({"client_id": client_id, "client_secret": client_secret}))
    return bool(secrets)
