"""Cold start: importing each functions/<name>/app.py in a fresh interpreter.

Lambda's Init phase imports the handler module in a new process; that import is the part
of a cold start this code controls. Each sample is a new `python -c PROBE` process that
times `import app` (perf_counter around the import only, so interpreter start-up is not in
it) and, the same way in the same run, a bare `import boto3`: the bound a handler's import
could approach, since every function needs boto3 anyway. Samples are interleaved
(boto3, then every function, per round) after one discarded round that fills __pycache__;
the figure is the median, and the ratio is median / median of `import boto3` in the same run.

Every function is measured as in Lambda: the probe blocks pyOpenSSL and awscrt as absent
(the Lambda runtime and the layer have neither; in the dev virtualenv boto3 would load them,
~80-100 ms of cryptography, OpenSSL and the CRT), against `boto3, as Lambda`. One dev-venv
pair (boto3, refresh) is kept for reference. One more probe adds to the refresh function's
import its first sampled invocation (tests.bench.first_traced): the X-Ray share, since the
broker makes its tracer then (broker.platform.observability); and one imports `cryptography`'s
AES-GCM alone: the vault's share.

Environment of a sample: the function's environment from template.yaml (Stack().
function_environment: table names, key, queue, ...), fake AWS credentials with config files
pointed at /dev/null, PYTHONPATH = the layer (layers/common), and what Lambda sets that
changes what an import does: LAMBDA_TASK_ROOT and AWS_LAMBDA_FUNCTION_NAME. With them
tracing is ON (POWERTOOLS_TRACE_DISABLED is not set), as in Lambda with `Tracing: Active`;
the X-Ray SDK, when the first traced probe loads it, touches /tmp/.aws-xray/initialized, as
it does in Lambda. The
probe replaces socket connect/sendto with a function that raises before importing, so an
import that tried the network (X-Ray daemon, AWS) would fail the benchmark, not reach out.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from local.stack import ROOT, Stack

PROBE = r"""
import socket, sys, time
def refuse(*args, **kwargs):
    raise OSError("cold start probe: no network during the import")
socket.socket.connect = socket.socket.connect_ex = socket.socket.sendto = refuse
if sys.argv[2]:
    sys.path.insert(0, sys.argv[2])
if sys.argv[3]:  # as in the Lambda runtime, which has neither (nor does the layer)
    sys.modules["OpenSSL"] = sys.modules["awscrt"] = None
started, cpu = time.perf_counter(), time.process_time()
__import__(sys.argv[1])
print("IMPORT_SECONDS", time.perf_counter() - started, len(sys.modules), time.process_time() - cpu)
"""


def environment(stack: Stack, logical: str) -> dict[str, str]:
    code_dir = ROOT / stack.resources[logical]["Properties"]["CodeUri"]
    env = {k: v for k, v in stack.function_environment(logical).items() if v != ""}
    env.update({
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT / "layers" / "common"),
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": stack.region, "AWS_REGION": stack.region, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "LAMBDA_TASK_ROOT": str(code_dir), "AWS_LAMBDA_FUNCTION_NAME": f"{stack.name}-{logical}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512", "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    })
    return env


def sample(module: str, path: str, env: dict[str, str],
           as_in_lambda: bool = False) -> tuple[float, float, int, float]:
    """Import seconds, whole-process seconds, modules loaded and the import's CPU seconds, for
    one fresh interpreter."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, module, path, "1" if as_in_lambda else ""], env=env,
                          capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    process = time.perf_counter() - began
    line = next((x for x in done.stdout.splitlines() if x.startswith("IMPORT_SECONDS")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"importing {module} from {path or 'site-packages'} failed:\n{done.stderr[-2000:]}")
    _, seconds, modules, cpu = line.split()
    return float(seconds), process, int(modules), float(cpu)


LAMBDA_BASE = "boto3, as Lambda"
DEV_BASE = "boto3, dev venv"
TRACE_HEADER_SAMPLED = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


# The webhook sender exists only with a WebhookUrl: measured with one, like every other function.
STACK_PARAMETERS = {"WebhookUrl": "https://hooks.example.com/insightly"}


def measure(*, samples: int) -> dict:
    stack = Stack(parameters=STACK_PARAMETERS)
    functions = {logical: res["Properties"]["CodeUri"].strip("/").split("/")[-1]
                 for logical, res in sorted(stack.of_type("AWS::Serverless::Function").items())}
    first_env = environment(stack, next(iter(functions)))
    # name -> (module, sys.path entry, environment, as in the Lambda runtime, baseline row).
    # Every function is measured as in Lambda: pyOpenSSL and awscrt blocked as absent. The dev
    # virtualenv has both, and boto3 loads them when present (~80-100 ms here: cryptography,
    # OpenSSL, the CRT), which neither the Lambda runtime nor the layer has. One dev-venv pair
    # (boto3, refresh) stays for reference.
    probes = {LAMBDA_BASE: ("boto3", "", first_env, True, LAMBDA_BASE)}
    for logical, name in functions.items():
        probes[name] = ("app", str(ROOT / "functions" / name), environment(stack, logical), True, LAMBDA_BASE)
    # The X-Ray share: the tracer is made on the first sampled invocation (broker.platform.observability);
    # this is the on-demand token route's import plus that, i.e. a traced first request.
    probes["refresh + X-Ray"] = ("tests.bench.first_traced", str(ROOT / "functions" / "refresh"),
                                 {**environment(stack, "RefreshFunction"), "_X_AMZN_TRACE_ID": TRACE_HEADER_SAMPLED},
                                 True, LAMBDA_BASE)
    # The vault's share: AES-GCM from `cryptography` (chosen over the AWS Encryption SDK, whose
    # import measured ~5-10x longer; docs/benchmarks.md). Loaded on the routes that seal or open.
    probes["vault AES-GCM"] = ("cryptography.hazmat.primitives.ciphers.aead", "", first_env, True, LAMBDA_BASE)
    probes[DEV_BASE] = ("boto3", "", first_env, False, DEV_BASE)
    probes["refresh, dev venv"] = ("app", *probes["refresh"][1:3], False, DEV_BASE)
    taken: dict[str, list] = {name: [] for name in probes}
    for round_ in range(samples + 1):
        for name, (module, path, env, as_in_lambda, _) in probes.items():
            measured = sample(module, path, env, as_in_lambda)
            if round_:  # the first round compiles bytecode: discarded
                taken[name].append(measured)
    figures = {}
    for name, values in taken.items():
        figures[name] = {"import_ms": round(statistics.median(v[0] for v in values) * 1000, 1),
                         "min_import_ms": round(min(v[0] for v in values) * 1000, 1),
                         "process_ms": round(statistics.median(v[1] for v in values) * 1000, 1),
                         "cpu_ms": round(statistics.median(v[3] for v in values) * 1000, 1),
                         "min_cpu_ms": round(min(v[3] for v in values) * 1000, 1),
                         "modules": values[-1][2], "samples_ms": [round(v[0] * 1000, 1) for v in values],
                         "baseline": probes[name][4]}
    for figure in figures.values():
        base = figures[figure["baseline"]]
        figure["ratio_to_boto3"] = round(figure["import_ms"] / base["import_ms"], 2)
        figure["min_ratio_to_boto3"] = round(figure["min_import_ms"] / base["min_import_ms"], 2)
        figure["cpu_ratio_to_boto3"] = round(figure["cpu_ms"] / base["cpu_ms"], 2)
    return {"samples": samples, "tracer": "on (LAMBDA_TASK_ROOT set, POWERTOOLS_TRACE_DISABLED unset)",
            "as_lambda": "pyOpenSSL and awscrt blocked as absent, except the dev venv rows",
            "figures": figures}


def table(r: dict) -> str:
    lines = [f"{'module':<20}  {'import ms':>9}  {'x boto3':>7}  {'min ms':>6}  {'x':>5}  {'CPU ms':>6}  {'x':>5}  "
             f"{'process ms':>10}  {'modules':>7}   (median of {r['samples']}; as Lambda but the dev venv rows; "
             "x: to the row's boto3; CPU: the import's process_time, steadier on a busy machine)"]
    for name, f in r["figures"].items():
        lines.append(f"{name:<20}  {f['import_ms']:>9.0f}  {f['ratio_to_boto3']:>7.2f}  {f['min_import_ms']:>6.0f}  "
                     f"{f['min_ratio_to_boto3']:>5.2f}  {f['cpu_ms']:>6.0f}  {f['cpu_ratio_to_boto3']:>5.2f}  "
                     f"{f['process_ms']:>10.0f}  {f['modules']:>7}")
    return "\n".join(lines)
