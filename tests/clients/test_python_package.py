"""The Python client as a user gets it: the wheel `pip install ./clients/python` builds, and the
README's 10-line example run as a script against the local stack."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from insightly_connect import Broker
from tests.clients.conftest import local_session

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"


def test_the_wheel_holds_the_package_and_its_type_marker(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(CLIENT)], check=True, capture_output=True)

    wheel = next(tmp_path.glob("insightly_connect_client-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {"__init__.py", "client.py", "errors.py", "models.py", "webhooks.py", "py.typed"}
    assert {f"insightly_connect/{name}" for name in package} <= names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert re.search(r"^Requires-Dist: botocore", metadata, re.M) and re.search(r"^Requires-Dist: standardwebhooks",
                                                                                metadata, re.M)


@pytest.mark.e2e
def test_the_readme_example_runs_against_the_stack(stack, standin, tmp_path):
    readme = (CLIENT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(example.strip().splitlines()) == 10
    script = tmp_path / "example.py"
    script.write_text(example.replace("http://127.0.0.1:3000", stack.local.gateway_url)
                      .replace("http://127.0.0.1:8080/", stack.describe()["RETURN_TO"]))
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(CLIENT / "src"),
           "AWS_ACCESS_KEY_ID": stack.local.access_key, "AWS_SECRET_ACCESS_KEY": stack.local.secret_key,
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true"}

    def run() -> str:
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60,
                              check=True).stdout

    before = run()
    assert "Send the browser to http" in before and "demo-user is not connected yet" in before
    account = standin("POST", "api-keys", {"pod": "na1"})
    broker = Broker(stack.local.gateway_url, region=stack.local.region, session=local_session(stack))
    broker.put_api_key("demo-user", account["api_key"], pod="na1")
    try:
        assert re.search(r"Insightly says: \S+@\S+", run())
    finally:
        broker.delete("demo-user")
