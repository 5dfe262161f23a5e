"""`make local` (`python -m local`): the whole broker on this machine, without Docker.

    moto server (local AWS)  :5000  MOTO_PORT      the template's tables, key and secret
    Insightly stand-in       :9000  STANDIN_PORT   FakeInsightly over HTTP (not started when
                                                   PROVIDER_AUTHORIZE_URL/PROVIDER_TOKEN_URL are set)
    gateway (HTTP API)       :3000  GATEWAY_PORT   SigV4 on backend routes, the real handlers in-process
    scheduler                       LOCAL_SCHEDULE_SECONDS overrides the RefreshSchedule rate
    demo SaaS app            :8080  DEMO_PORT

Every server is a thread of this one process; Ctrl-C or SIGTERM stops them all.

Every template parameter can be set through the environment variable of the same name in
UPPER_SNAKE case (ProviderTokenUrl -> PROVIDER_TOKEN_URL). OAUTH_CLIENT_ID and
OAUTH_CLIENT_SECRET go into the client secret (default: the stand-in's). The backend
routes accept SigV4 signed with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default
testing / testing), region AWS_DEFAULT_REGION (default us-east-1), service execute-api.

Webhooks: WEBHOOK_URL (the WebhookUrl parameter; http is allowed to this machine) receives
every lifecycle event, signed with WEBHOOK_SECRET (whsec_<base64 key>, at least 16 bytes;
default: generated). Without WEBHOOK_URL the demo app's own POST /webhooks is the target,
so its page lists the webhooks it received and verified.

Tests start the same stack on free ports with `start_local_stack()`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from local.aws import MotoServer, client_credentials, put_client_credentials, session_for
from local.fake_insightly import FakeInsightly
from local.gateway import EnvironmentOverlay, Gateway, reset_broker
from local.schedule import Scheduler, SqsEventSource, schedulers, sqs_event_sources
from local.stack import ROOT, Stack, load_template, parameter_env_name

DEFAULT_PORTS = {"moto": 5000, "standin": 9000, "gateway": 3000, "demo": 8080}
SAM_ENV_FILE = ROOT / ".aws-sam" / "local-env.json"
FUNCTION_LOG = ROOT / ".aws-sam" / "local-functions.log"  # the functions' own output (not LOCAL_VERBOSE=1)
DOCKER_HOST = "host.docker.internal"  # the host machine, seen from a `sam local` container
SAM_LOCAL_BASE_URL = "http://127.0.0.1:3000"  # `sam local start-api`'s default address


@dataclass
class LocalStack:
    """A running local stack. Everything in it is a thread of this process; stop() ends it."""

    stack: Stack
    moto: MotoServer
    gateway: Gateway
    session: object  # boto3-like session whose clients go to the moto server
    region: str
    access_key: str
    secret_key: str
    standin: object | None = None
    demo: object | None = None
    schedulers: list[Scheduler] = field(default_factory=list)
    sqs_sources: list[SqsEventSource] = field(default_factory=list)
    env_file: Path | None = None
    function_log: Path | None = None
    webhook_url: str | None = None
    _overlay: EnvironmentOverlay | None = None
    _stopped: bool = False

    @property
    def moto_url(self) -> str:
        return self.moto.url

    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    @property
    def standin_url(self) -> str | None:
        return self.standin.url if self.standin else None

    @property
    def provider_base_url(self) -> str:
        return self.stack.parameters["ProviderApiBaseUrl"]

    @property
    def provider(self) -> FakeInsightly | None:
        """The stand-in's FakeInsightly (switch faults, inspect calls), when a stand-in runs."""
        return self.standin.provider if self.standin else None

    @property
    def demo_url(self) -> str | None:
        return self.demo.url if self.demo else None

    @property
    def env(self) -> dict[str, str]:
        """The environment every in-process function runs with."""
        return dict(self.gateway.env)

    @property
    def urls(self) -> dict[str, str | None]:
        return {"demo": self.demo_url, "gateway": self.gateway_url, "standin": self.standin_url,
                "provider": self.provider_base_url, "moto": self.moto_url}

    def stop(self) -> None:
        """Stop every server and thread, newest first, and put os.environ back."""
        if self._stopped:
            return
        self._stopped = True
        _stop_all([self.demo, *self.sqs_sources, *self.schedulers, self.gateway, self.standin, self.moto])
        if self._overlay:
            self._overlay.restore()
        reset_broker()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> str:
        client_id = self.provider.client_id if self.provider else os.environ.get("OAUTH_CLIENT_ID", "?")
        width = 20
        lines = ["", "Insightly Connect - local stack (no Docker: every server is a thread of this process)", ""]

        def row(name, value, note=""):
            lines.append(f"  {name:<{width}}{value}" + (f"   {note}" if note else ""))

        if self.demo:
            row("Demo SaaS app", self.demo_url, "<- open this in a browser")
        row("Broker (gateway)", self.gateway_url,
            f"backend routes: SigV4, service execute-api, region {self.region}")
        secret = self.secret_key if self.secret_key == "testing" else "(from AWS_SECRET_ACCESS_KEY)"
        row("", f"access key {self.access_key} / secret {secret}")
        if self.standin:
            row("Insightly stand-in", self.standin.base_url, f"client_id {client_id}")
        else:
            row("Provider", self.stack.parameters["ProviderAuthorizeUrl"], "(PROVIDER_AUTHORIZE_URL)")
        row("Local AWS (moto)", self.moto_url, "AWS_ENDPOINT_URL for the functions")
        row("Redirect URI", f"{self.env['PUBLIC_BASE_URL']}/oauth/callback")
        row("Return origins", self.env["ALLOWED_RETURN_ORIGINS"])
        for scheduler in self.schedulers:
            row("Scheduler", f"{scheduler.function} every {scheduler.interval:g} s",
                f"({scheduler.expression}; LOCAL_SCHEDULE_SECONDS overrides)")
        if self.webhook_url:
            row("Webhooks", self.webhook_url, "signed with the stack's WebhookSecret (WEBHOOK_SECRET sets it)")
        for source in self.sqs_sources:
            row("SQS", f"{source.queue_arn} -> {source.function}")
        if self.function_log:
            row("Function logs", _relative(self.function_log),
                "(JSON logs and metrics; LOCAL_VERBOSE=1 prints them here)")
        if self.env_file:
            row("sam local env file", _relative(self.env_file),
                "(sam local start-api/invoke --env-vars; functions reach this machine as host.docker.internal)")
        lines += ["", "Ctrl-C to stop.", ""]
        return "\n".join(lines)


def _stop_all(things) -> None:
    for thing in things:
        if thing is None:
            continue
        try:
            thing.stop()
        except Exception as exc:  # keep stopping the rest
            print(f"[local] stopping {type(thing).__name__} failed: {exc!r}", file=sys.stderr)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def callback_uris(gateway_url: str, *, sam_local: bool = False) -> list[str]:
    """The redirect URIs "registered" with the stand-in, as a real provider accepts only
    registered ones: this gateway's /oauth/callback (on loopback by 127.0.0.1 and by
    localhost) and, when the `sam local` env file is written, `sam local start-api`'s. A
    PUBLIC_BASE_URL that does not lead to the gateway is then refused on the consent page."""
    bases = [gateway_url]
    parts = urlsplit(gateway_url)
    if parts.hostname in ("127.0.0.1", "localhost"):
        bases += [f"{parts.scheme}://{name}:{parts.port}" for name in ("127.0.0.1", "localhost")]
    if sam_local:
        bases.append(SAM_LOCAL_BASE_URL)
    return [f"{base}/oauth/callback" for base in dict.fromkeys(bases)]


def webhook_secret(environ: Mapping[str, str]) -> str:
    """WEBHOOK_SECRET, checked, or a new random one: the Standard Webhooks form whsec_<base64>."""
    from broker.background.webhooks import SECRET_PREFIX, secret_key

    given = environ.get("WEBHOOK_SECRET")
    if not given:
        return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()
    try:
        secret_key(given)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ValueError(f"WEBHOOK_SECRET must be whsec_<base64 key of 16+ bytes>: {exc}") from None
    return given


def enable_webhooks(stack: Stack, session, secret: str) -> None:
    """What the template's webhook resources do once deployed: the secret holds `secret`, and
    the WebhookRule sends every lifecycle event to the WebhookQueue."""
    session.client("secretsmanager").put_secret_value(SecretId=stack.refs["WebhookSecret"],
                                                      SecretString=json.dumps({"current": secret}))
    rule = stack.resolve(stack.resources["WebhookRule"]["Properties"])
    events = session.client("events")
    events.put_rule(Name=f"{stack.name}-WebhookRule", EventBusName=rule["EventBusName"],
                    EventPattern=json.dumps(rule["EventPattern"]))
    events.put_targets(Rule=f"{stack.name}-WebhookRule", EventBusName=rule["EventBusName"],
                       Targets=[{"Id": t["Id"], "Arn": t["Arn"]} for t in rule["Targets"]])


def start_local_stack(*, host: str = "127.0.0.1", moto_port: int = 0, standin_port: int = 0, gateway_port: int = 0,
                      demo_port: int = 0, demo: bool = True, standin: bool | None = None,
                      provider: FakeInsightly | None = None, schedule: bool = True,
                      schedule_seconds: float | None = None, access_key: str | None = None,
                      secret_key: str | None = None, region: str | None = None,
                      stack_name: str = "insightly-connect", env_file: Path | str | None = None,
                      access_log: object = False, environ: Mapping[str, str] | None = None,
                      **parameters: str) -> LocalStack:
    """Start the whole local stack in this process and return it running.

    Ports 0 (the default) mean free ports. `parameters` are template parameters by name
    (e.g. RefreshLeadSeconds="3500"); they win over `environ`, whose UPPER_SNAKE variables
    (PROVIDER_TOKEN_URL, ...) and OAUTH_CLIENT_ID/OAUTH_CLIENT_SECRET/AWS_* are read only
    when given (main() passes os.environ; tests normally pass nothing). `standin`: None
    starts the stand-in unless the provider URLs are configured. `provider`: the
    FakeInsightly the stand-in serves; unless it has `redirect_uris` already, they become
    the gateway's callback (see `callback_uris`). `schedule_seconds`: the scheduler interval (None:
    LOCAL_SCHEDULE_SECONDS or the template's rate). `env_file`: where to write the
    `sam local --env-vars` file with this stack's real values (None: not written).
    Webhooks go to WebhookUrl (WEBHOOK_URL) or, when it is not given and the demo runs, to
    the demo app's /webhooks; signed with WEBHOOK_SECRET from `environ` or a generated one.
    """
    environ = dict(environ or {})
    hook_secret = webhook_secret(environ)  # a bad WEBHOOK_SECRET stops us before anything starts
    region, access_key, secret_key = _aws_identity(environ, region, access_key, secret_key)
    configured = _configured_parameters(environ, parameters)
    if standin is None:
        standin = not ({"ProviderAuthorizeUrl", "ProviderTokenUrl"} & set(configured))

    started: list = []  # stopped, newest first, if anything fails on the way
    overlay = _process_credentials(region, access_key, secret_key)
    try:
        started.append(moto := MotoServer(host, moto_port).start())
        overlay.apply()
        local_provider = _start_standin(started, host, standin_port, provider, environ) if standin else None
        # Bound now (its port is the allowed return origin); pointed at the gateway below.
        demo_app = _bind_demo(started, host, demo_port, region, access_key, secret_key) if demo else None
        defaults = _stack_defaults(host, local_provider, demo_app)
        stack = Stack(name=stack_name, region=region, parameters={**defaults, **configured})
        session, webhook_url = _provision(stack, moto, local_provider, environ, hook_secret)
        if demo_app is not None and webhook_url and webhook_url == defaults.get("WebhookUrl"):
            demo_app.webhook_secret = hook_secret  # the demo is the receiver: it verifies
        gateway = _start_gateway(started, stack, moto, host, gateway_port, credentials={access_key: secret_key},
                                 region=region, access_log=access_log)
        if local_provider is not None and not local_provider.provider.redirect_uris:
            local_provider.provider.redirect_uris = callback_uris(gateway.url, sam_local=env_file is not None)
        local = LocalStack(stack=stack, moto=moto, gateway=gateway, session=session, region=region,
                           access_key=access_key, secret_key=secret_key, standin=local_provider,
                           webhook_url=webhook_url, _overlay=overlay)
        _start_background(local, started, schedule=schedule, schedule_seconds=schedule_seconds)
        if demo_app is not None:
            _start_demo(local, demo_app)
        if env_file is not None:
            local.env_file = write_sam_env_file(local, Path(env_file))
        return local
    except BaseException:
        _stop_all(reversed(started))
        overlay.restore()
        reset_broker()
        raise


def _aws_identity(environ: Mapping[str, str], region: str | None, access_key: str | None,
                  secret_key: str | None) -> tuple[str, str, str]:
    """Region, access key and secret key: as given, else from `environ`, else the defaults."""
    return (region or environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or "us-east-1",
            access_key or environ.get("AWS_ACCESS_KEY_ID") or "testing",
            secret_key or environ.get("AWS_SECRET_ACCESS_KEY") or "testing")


def _process_credentials(region: str, access_key: str, secret_key: str) -> EnvironmentOverlay:
    """The credentials and region boto3 uses in this process (applied once moto runs); the
    endpoint (moto) is part of the functions' environment, which the gateway sets."""
    return EnvironmentOverlay({"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
                               "AWS_DEFAULT_REGION": region, "AWS_REGION": region})


def _configured_parameters(environ: Mapping[str, str], parameters: Mapping[str, str]) -> dict[str, str]:
    """Template parameters set by `parameters` by name, else by their UPPER_SNAKE variable."""
    template_parameters = load_template().get("Parameters", {})
    unknown = set(parameters) - set(template_parameters)
    if unknown:
        raise TypeError(f"not start_local_stack options or template parameters: {sorted(unknown)}")
    configured = {p: environ[parameter_env_name(p)] for p in template_parameters if parameter_env_name(p) in environ}
    configured.update(parameters)
    return configured


def _start_standin(started: list, host: str, port: int, provider: FakeInsightly | None,
                   environ: Mapping[str, str]):
    """The stand-in serving `provider`, else one configured from `environ` (STANDIN_*), else a default one."""
    from local.standin import StandIn

    if provider is not None:
        standin = StandIn(host, port, provider)
    elif environ:
        standin = StandIn.from_env(host, port, environ)
    else:
        standin = StandIn(host, port)
    started.append(standin)
    return standin.start()


def _bind_demo(started: list, host: str, port: int, region: str, access_key: str, secret_key: str):
    from local.demo_app import DemoApp

    demo_app = DemoApp(host, port, region=region, access_key=access_key, secret_key=secret_key)
    started.append(demo_app)
    return demo_app


def _start_demo(local: LocalStack, demo_app) -> None:
    """The demo app, pointed at the running gateway (and the stand-in, for its test keys)."""
    demo_app.standin_url = local.standin.url if local.standin is not None else None
    local.demo = demo_app.point_at(local.gateway_url).start()


def _stack_defaults(host: str, standin, demo_app) -> dict[str, str]:
    """Template parameters that point the stack at what runs here: the stand-in as the
    provider, the demo app as the return origin and the webhook receiver."""
    defaults: dict[str, str] = {}
    if standin is not None:
        base = standin.base_url
        defaults.update(ProviderAuthorizeUrl=f"{base}/oauth2/authorize", ProviderTokenUrl=f"{base}/oauth2/token",
                        ProviderApiBaseUrl=base, ProviderRevocationUrl=f"{base}/oauth2/revoke", ProviderIssuer="",
                        # API keys: the stand-in's per-pod API (INSIGHTLY_API_URL_TEMPLATE overrides it)
                        InsightlyApiUrlTemplate=standin.api_url_template)
    if demo_app is not None:
        demo_port = urlsplit(demo_app.url).port
        defaults["AllowedReturnOrigins"] = f"http://{host}:{demo_port},http://localhost:{demo_port}"
        defaults["WebhookUrl"] = f"{demo_app.url}/webhooks"
    return defaults


def _provision(stack: Stack, moto: MotoServer, standin, environ: Mapping[str, str],
               hook_secret: str) -> tuple[object, str | None]:
    """The template's resources in moto, the OAuth client's credentials in its secret and,
    with a WebhookUrl, the webhook plumbing. Returns a session whose clients go to moto, and
    the WebhookUrl (None without one)."""
    session = session_for(moto.url, stack.region)
    stack.provision(session)
    if standin is not None:
        client_id, client_secret = standin.provider.client_id, standin.provider.client_secret
    else:
        client_id, client_secret = client_credentials(environ)
    put_client_credentials(stack, session, client_id, client_secret)
    webhook_url = stack.parameters.get("WebhookUrl") or None
    if webhook_url:
        enable_webhooks(stack, session, hook_secret)
    return session, webhook_url


def _start_gateway(started: list, stack: Stack, moto: MotoServer, host: str, port: int, *,
                   credentials: dict[str, str], region: str, access_log: object) -> Gateway:
    # The in-process functions (and anything else using boto3 here) talk to moto only.
    gateway = Gateway(stack, host, port, credentials=credentials, region=region,
                      env={"AWS_ENDPOINT_URL": moto.url, "ALLOW_LOOPBACK_HTTP_PROVIDER": "true",
                           "ALLOW_LOOPBACK_WEBHOOK": "true"},
                      access_log=access_log)
    started.append(gateway)
    return gateway.start()


def _start_background(local: LocalStack, started: list, *, schedule: bool, schedule_seconds: float | None) -> None:
    """The template's schedules and SQS event sources, each a thread."""
    if schedule:
        local.schedulers = schedulers(local.stack, interval=schedule_seconds)
        started += [s.start() for s in local.schedulers]
    local.sqs_sources = sqs_event_sources(local.stack, local.session.client("sqs"))
    started += [s.start() for s in local.sqs_sources]


# -- the `sam local --env-vars` file -----------------------------------------------------------

def _docker_url(url: str) -> str:
    """A URL on this machine's loopback, as a `sam local` container reaches it."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "0.0.0.0"):  # noqa: S104 - matching, not binding
        netloc = DOCKER_HOST + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def sam_env(stack: Stack, *, aws_endpoint_url: str, public_base_url: str = SAM_LOCAL_BASE_URL) -> dict:
    """`sam local ... --env-vars` content: each function's template environment, pointed at the
    local AWS and the stand-in from inside a container."""
    content = {}
    for logical in stack.of_type("AWS::Serverless::Function"):
        env = stack.function_environment(logical)
        for key in ("PROVIDER_AUTHORIZE_URL", "PROVIDER_TOKEN_URL", "PROVIDER_API_BASE_URL",
                    "PROVIDER_REVOCATION_URL", "REFRESH_QUEUE_URL", "INSIGHTLY_API_URL_TEMPLATE"):
            if env.get(key):
                env[key] = _docker_url(env[key])
        env.update(AWS_ENDPOINT_URL=_docker_url(aws_endpoint_url), PUBLIC_BASE_URL=public_base_url,
                   ALLOW_LOOPBACK_HTTP_PROVIDER="true",  # the stand-in is plain http on this machine
                   COOKIE_SECURE="true" if public_base_url.startswith("https://") else "false")
        content[logical] = env
    return content


def write_sam_env_file(local: LocalStack, path: Path = SAM_ENV_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sam_env(local.stack, aws_endpoint_url=local.moto_url), indent=2) + "\n")
    return path


# -- make local ------------------------------------------------------------------------------

def main() -> int:
    environ = os.environ
    ports = {}
    for name, default in DEFAULT_PORTS.items():
        variable = f"{name.upper()}_PORT"
        try:
            ports[name] = int(environ.get(variable, default))
        except ValueError:
            print(f"{variable} must be a port number", file=sys.stderr)
            return 2
    # Each invocation without a business metric says so; locally that is only noise.
    warnings.filterwarnings("ignore", "No application metrics to publish")
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # The console gets the banner and one line per request or background run. What the
    # functions write to stdout (Powertools' JSON log lines, EMF metrics), as Lambda sends it
    # to CloudWatch, goes to a file, or here too with LOCAL_VERBOSE=1.
    console, function_log = sys.stdout, None
    if environ.get("LOCAL_VERBOSE") != "1":
        FUNCTION_LOG.parent.mkdir(parents=True, exist_ok=True)
        function_log = FUNCTION_LOG.open("w", encoding="utf-8", buffering=1)
        sys.stdout = function_log
    try:
        return _serve(environ, ports, stop, console, function_log)
    finally:
        sys.stdout = console
        if function_log is not None:
            function_log.close()


def _serve(environ, ports: dict[str, int], stop: threading.Event, console, function_log) -> int:
    try:
        # LOCAL_HOST=0.0.0.0 lets `sam local` containers reach moto and the stand-in.
        local = start_local_stack(host=environ.get("LOCAL_HOST", "127.0.0.1"), moto_port=ports["moto"],
                                  standin_port=ports["standin"], gateway_port=ports["gateway"],
                                  demo_port=ports["demo"], environ=environ, env_file=SAM_ENV_FILE,
                                  access_log=console)
    except ValueError as exc:  # a setting that cannot work (WEBHOOK_SECRET)
        print(f"make local: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"make local: could not start: {exc}. Is a port in use? Set MOTO_PORT, STANDIN_PORT, GATEWAY_PORT "
              "or DEMO_PORT to choose others.", file=sys.stderr)
        return 1
    for background in (*local.schedulers, *local.sqs_sources):
        background.activity = console
    local.function_log = Path(function_log.name) if function_log is not None else None
    try:
        print(local.summary(), file=console, flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        print("Stopping the local stack...", file=console, flush=True)
        local.stop()
        print("Stopped.", file=console, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
