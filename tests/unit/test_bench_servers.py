"""The throughput benchmark's out-of-process servers and its per-thread CPU count (tests/bench)."""

import os
import sys
import time

import pytest
import requests

from broker.background import worker
from tests.bench.servers import ServerProcess, free_port, split_stack
from tests.bench.throughput import ThreadCpu, timed_refresh_pool


def test_a_server_process_is_ready_on_http_and_gone_after_stop():
    port = free_port()
    server = ServerProcess("http.server", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                           f"http://127.0.0.1:{port}/")
    try:
        server.start(timeout=30)
        assert requests.get(server.ready_url, timeout=5).status_code == 200
        assert server.cpu_seconds() is None or server.cpu_seconds() >= 0
    finally:
        server.stop()
    assert server.process.poll() is not None
    with pytest.raises(requests.ConnectionError):
        requests.get(server.ready_url, timeout=2)


def test_a_server_that_exits_before_it_is_ready_fails_fast_with_its_output():
    server = ServerProcess("broken", [sys.executable, "-c", "import sys; print('port in use'); sys.exit(3)"],
                           f"http://127.0.0.1:{free_port()}/")
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with 3 .*port in use"):
        server.start(timeout=30)
    assert time.monotonic() - began < 20
    server.stop()


def burn(_service, _record) -> str:
    until = time.thread_time() + 0.05  # 50 ms of this thread's CPU, not wall time
    while time.thread_time() < until:
        pass
    return "refreshed"


def test_the_broker_cpu_count_includes_the_worker_refresh_pool_threads():
    cpu = ThreadCpu()
    event = {"Records": [{"messageId": f"m-{i}", "body": "{}"} for i in range(4)]}
    with timed_refresh_pool(cpu):
        assert worker.refresh_batch(event, service=None, refresh=burn) == {"batchItemFailures": []}
    assert cpu.seconds >= 4 * 0.05
    assert worker.ThreadPoolExecutor.__name__ == "ThreadPoolExecutor"  # put back


def test_the_split_stack_runs_moto_and_the_standin_in_other_processes_and_stops_them():
    with split_stack() as split:
        servers = [split.moto.process, split.standin.process]
        assert {p.pid for p in servers}.isdisjoint({os.getpid()})
        assert os.environ["AWS_ENDPOINT_URL"] == split.env["AWS_ENDPOINT_URL"]
        tokens = split.mint_token_set()  # issued by the stand-in's process, over HTTP
        assert tokens.access_token and tokens.refresh_token
        tables = split.session.client("dynamodb").list_tables()["TableNames"]
        assert split.env["CONNECTIONS_TABLE"] in tables
        assert all(seconds is not None and seconds > 0 for seconds in split.cpu_seconds().values())
    assert all(p.poll() is not None for p in servers)
    assert "AWS_ENDPOINT_URL" not in os.environ
