"""The local stack for the throughput benchmark with moto and the stand-in in processes of
their own, so the benchmark's process holds only the broker (its workers and clients).

    with split_stack() as split:      # moto server + stand-in subprocesses on free loopback ports
        split.env                     # the functions' environment (AWS_ENDPOINT_URL = moto)
        split.mint_token_set()        # a token set the stand-in issued (authorization_code grant)
        split.cpu_seconds()           # {"moto": s, "standin": s}: each server process's CPU so far

Each server is `python -m ...` on a port picked here, ready once it answers HTTP; it is
stopped (SIGTERM, then SIGKILL) when the block ends, however it ends, and on Linux the
kernel kills it too if the benchmark process dies first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import requests

from broker.credentials.provider import TokenSet
from local.aws import put_client_credentials, session_for
from local.fake_insightly import FakeInsightly
from local.gateway import EnvironmentOverlay, local_environment, reset_broker
from local.stack import ROOT, Stack

HOST = "127.0.0.1"
API_PREFIX = "/v3.1"  # the stand-in's, local/standin.py
CALLBACK = "http://127.0.0.1/bench/callback"  # the stand-in accepts any http(s) redirect URI by default
START_TIMEOUT = 60.0  # seconds; moto's server imports for a few seconds on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM if the benchmark process dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: the finally blocks still stop it
        pass


class ServerProcess:
    """A server in its own process, ready when `ready_url` answers (any HTTP status < 500)."""

    def __init__(self, name: str, argv: list[str], ready_url: str, env: dict[str, str] | None = None):
        self.name, self.argv, self.ready_url = name, argv, ready_url
        self.env = env
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop(); output kept for errors only

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} before it was ready: "
                                   f"{self.output()[-2000:]}")
            try:
                if requests.get(self.ready_url, timeout=1).status_code < 500:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g} s: {self.output()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the process so far (Linux /proc; None elsewhere)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, IndexError, ValueError):
            return None


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "layers" / "common"), str(ROOT)])
    env.update(extra)
    return env


def moto_process() -> ServerProcess:
    port = free_port()
    return ServerProcess("moto server", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                         f"http://{HOST}:{port}/moto-api/", _child_env())


def standin_process() -> ServerProcess:
    port = free_port()
    # Tokens live an hour, as FakeInsightly's default (make local's 120 s would make every
    # connection due as soon as it is stored; the benchmark makes them due itself).
    return ServerProcess("Insightly stand-in", [sys.executable, "-m", "local.standin", "--host", HOST,
                                                "--port", str(port)],
                         f"http://{HOST}:{port}/_control/state", _child_env(STANDIN_ACCESS_TTL="3600"))


@dataclass
class SplitStack:
    moto: ServerProcess
    standin: ServerProcess
    stack: Stack
    session: object
    env: dict[str, str]

    @property
    def standin_url(self) -> str:
        return self.standin.ready_url.rsplit("/_control/", 1)[0]

    def mint_token_set(self) -> TokenSet:
        """A token set the stand-in issued, as the callback gets it: approve, then exchange the code."""
        base, client = self.standin_url + API_PREFIX, FakeInsightly()
        params = {"client_id": client.client_id, "response_type": "code", "redirect_uri": CALLBACK, "state": "b"}
        approved = requests.post(f"{base}/oauth2/authorize/decision", data={**params, "decision": "approve"},
                                 allow_redirects=False, timeout=10)
        approved.raise_for_status()
        code = parse_qs(urlsplit(approved.headers["Location"]).query)["code"][0]
        answer = requests.post(f"{base}/oauth2/token", timeout=10, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
            "client_id": client.client_id, "client_secret": client.client_secret})
        answer.raise_for_status()
        return TokenSet.from_response(answer.json())

    def cpu_seconds(self) -> dict[str, float | None]:
        return {"moto": self.moto.cpu_seconds(), "standin": self.standin.cpu_seconds()}


@contextlib.contextmanager
def split_stack() -> Iterator[SplitStack]:
    """moto and the stand-in as subprocesses, the template's resources in moto, the client
    secret filled, and os.environ set as the functions see it; everything undone at the end."""
    moto, standin = moto_process(), standin_process()
    overlay = None
    try:
        moto.start()
        standin.start()
        base = standin.ready_url.rsplit("/_control/", 1)[0]
        provider = {"ProviderAuthorizeUrl": f"{base}{API_PREFIX}/oauth2/authorize",
                    "ProviderTokenUrl": f"{base}{API_PREFIX}/oauth2/token", "ProviderApiBaseUrl": base + API_PREFIX,
                    "ProviderRevocationUrl": f"{base}{API_PREFIX}/oauth2/revoke", "ProviderIssuer": "",
                    "InsightlyApiUrlTemplate": base + "/{pod}" + API_PREFIX}
        stack = Stack(parameters=provider)
        moto_url = moto.ready_url.rsplit("/moto-api/", 1)[0]
        session = session_for(moto_url)
        stack.provision(session)
        defaults = FakeInsightly()
        put_client_credentials(stack, session, defaults.client_id, defaults.client_secret)
        env = local_environment(stack, public_base_url=f"http://{HOST}:9",  # no gateway: never called
                                extra={"AWS_ENDPOINT_URL": moto_url, "ALLOW_LOOPBACK_HTTP_PROVIDER": "true"})
        overlay = EnvironmentOverlay(env)
        overlay.apply()
        reset_broker()
        yield SplitStack(moto, standin, stack, session, env)
    finally:
        if overlay is not None:
            overlay.restore()
            reset_broker()
        standin.stop()
        moto.stop()
