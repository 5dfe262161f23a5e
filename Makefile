# The front door: every target installs what it needs first, so a fresh clone needs
# nothing but python3 (3.11 or 3.12) and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Locks (`make lock`), generated from pyproject.toml: the dev venv (any OS, Python 3.11+)
# and the Lambda layer (arm64, CPython 3.12). Both pin every package with its hashes.
DEV_LOCK   := requirements-dev.txt
LAYER_LOCK := layers/common/requirements.txt
SECURITY_LOCK := requirements-security.txt

# sam and cfn-lint read credentials and a region even to validate; these fakes make sure a
# local command can never reach a real account. `make deploy` uses your own environment.
FAKE_AWS := AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
            AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export SAM_CLI_TELEMETRY := 0
# What `make local`, `smoke` and `bench` import from the source tree, as pytest does (its
# `pythonpath` in pyproject.toml): the layer, the checkout's top (local/, tests/) and the
# Python client the demo app uses. A path, not an install into the venv: the client is read
# from the checkout as it is now, nothing installed can go stale, and the venv stays exactly
# the locked set.
LOCAL_PYTHONPATH := layers/common:.:clients/python/src

.PHONY: help install lock test test-node fuzz chromium lint validate security build deploy local smoke bench docs clean

help:
	@echo "make test      create .venv if needed, install, run the test suite"
	@echo "make test-node the Node client (clients/node): npm ci && npm test, against a local stack it starts"
	@echo "make fuzz      schemathesis against the local stack, held to docs/openapi.yaml (about 70 s)"
	@echo "make lock      re-resolve both locks from pyproject.toml (then make install)"
	@echo "make lint      ruff"
	@echo "make validate  sam validate --lint and cfn-lint on template.yaml"
	@echo "make security  checkov on template.yaml, bandit on layers/ and functions/, cfn-lint"
	@echo "make build     sam build (no Docker, no python3.12 needed)"
	@echo "make deploy    sam build && sam deploy --guided (uses your AWS credentials)"
	@echo "make local     the Docker-free local stack"
	@echo "make smoke     read-only checks of the local stack, or of a deployed one: API_URL=... AWS_REGION=..."
	@echo "make bench     benchmarks on loopback (BENCH_ARGS=--quick); results in .bench/"
	@echo "make docs      the docs site (mkdocs --strict) into .site/"

install: $(STAMP)

# Exactly the locked set: --require-hashes refuses anything unpinned, unhashed or altered.
# --no-deps because pip's hash mode cannot pin a dependency's extras (aws-sam-cli wants
# boto3-stubs[...]); the lock is complete by construction, and pip check proves it.
# The venv's own pip is first replaced by the locked one (its entry in the lock): newer pip
# installs the set in about two thirds of the time.
$(STAMP): $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	awk '/^pip==/ {keep = 1; print; next} keep && /^[^ ]/ {exit} keep' $(DEV_LOCK) > $(VENV)/pip-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(VENV)/pip-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip check
	touch $@

# uv resolves from PyPI only (it does not read pip.conf); the hashes are PyPI's. It keeps the
# versions already locked unless pyproject.toml needs others; LOCK_UPGRADE=--upgrade moves all.
LOCK_ARGS = --quiet --generate-hashes --custom-compile-command "make lock" $(LOCK_UPGRADE)
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		$(LOCK_ARGS) -o $(DEV_LOCK)
	$(BIN)/uv pip compile pyproject.toml --python-version 3.12 --python-platform aarch64-manylinux_2_34 \
		--only-binary :all: --no-emit-package boto3 --no-emit-package botocore --no-emit-package s3transfer \
		$(LOCK_ARGS) -o $(LAYER_LOCK)
	$(BIN)/uv pip compile pyproject.toml --group security --universal --python-version 3.11 \
		$(LOCK_ARGS) -o $(SECURITY_LOCK)

# One pytest-xdist worker per core (TEST_WORKERS=0: one process). --dist loadscope keeps a
# module's tests on one worker, so a module's local stack and browser start once.
TEST_WORKERS ?= auto
test: $(STAMP) chromium
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

# The Node client's tests (node 20+ and npm): npm test starts the local stack on free ports with
# this venv's Python (tests/clients/stack.py), runs node's test runner and stops the stack.
test-node: $(STAMP)
	cd clients/node && npm ci --no-audit --no-fund && npm test

# Property-based tests of docs/openapi.yaml against the local stack (tests/fuzz, not collected
# by `make test`): every operation, SigV4-signed, plus the links of POST /connect-sessions.
# FUZZ_EXAMPLES (per operation, default 40) and FUZZ_STATEFUL_EXAMPLES (default 15) bound it.
fuzz: $(STAMP)
	FUZZ=1 $(BIN)/python -m pytest -p no:cacheprovider tests/fuzz

# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser
# download is not used). Installed here when missing and we may; otherwise a clear stop.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser tests need Chromium: sudo apt-get install chromium (or your OS's package)"; exit 1; \
	  fi; }

# The scanners live in their own venv, from their own lock (checkov pins an old boto3).
SECURITY_VENV  := .venv-security
SECURITY_STAMP := $(SECURITY_VENV)/.installed
$(SECURITY_STAMP): $(SECURITY_LOCK)
	$(PYTHON) -m venv $(SECURITY_VENV)
	$(SECURITY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(SECURITY_LOCK)
	$(SECURITY_VENV)/bin/python -m pip check
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .

# Fails on any finding not fixed or suppressed inline with a reason: `# checkov:skip=CKV_AWS_n:why`
# inside the template resource, `# nosec Bnnn  # why` on the Python line. checkov reads the SAM
# template itself (it knows AWS::Serverless::*; `sam build` output is the same untransformed
# template). --skip-download: no call to Prisma Cloud. checkov exits 0 on a template it cannot
# parse, so its JSON summary is checked too: no parsing error, and resources were scanned.
CHECKOV_REPORT := $(SECURITY_VENV)/checkov.json
security: $(STAMP) $(SECURITY_STAMP)
	$(SECURITY_VENV)/bin/checkov --file template.yaml --framework cloudformation --compact --quiet \
		--skip-download -o cli -o json --output-file-path console,$(CHECKOV_REPORT)
	$(SECURITY_VENV)/bin/python -c 'import json, sys; s = json.load(open(sys.argv[1]))["summary"]; \
		sys.exit(0 if s["parsing_errors"] == 0 and s["resource_count"] > 0 else f"checkov did not scan the template: {s}")' \
		$(CHECKOV_REPORT)
	$(SECURITY_VENV)/bin/bandit --recursive --quiet layers functions
	$(FAKE_AWS) $(BIN)/cfn-lint template.yaml

validate: $(STAMP)
	$(FAKE_AWS) $(BIN)/sam validate --lint
	$(BIN)/cfn-lint template.yaml

build: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sam build

deploy: build
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sam deploy --guided

# The schedule runs every 30 s locally (the template says 5 minutes) so refreshes of the
# stand-in's 120 s tokens can be watched; LOCAL_SCHEDULE_SECONDS overrides it.
# Webhooks go to the demo app's receiver; `make local WEBHOOK_URL=http://127.0.0.1:8090/hooks
# WEBHOOK_SECRET=whsec_...` sends them to yours instead (command-line variables reach the environment).
# exec: no shell stays between make and the stack, so Ctrl-C reaches the stack alone, which
# stops cleanly and exits 0 (a shell left waiting would die of the SIGINT and make report it).
local: $(STAMP)
	exec env LOCAL_SCHEDULE_SECONDS=$${LOCAL_SCHEDULE_SECONDS:-30} PYTHONPATH=$(LOCAL_PYTHONPATH) $(BIN)/python -m local

# Without API_URL: a local stack on free ports. With API_URL=... AWS_REGION=...: the deployed
# stack, signed with your AWS credentials; it creates one connect session (see tests/smoke.py).
smoke: $(STAMP)
	PYTHONPATH=$(LOCAL_PYTHONPATH) $(BIN)/python -m tests.smoke

# Loopback only, a few minutes on 2 cores; writes .bench/results.json and .bench/throughput.png.
# Options: BENCH_ARGS="--quick --latency-ms 100 --connections 160" (see docs/benchmarks.md).
bench: $(STAMP)
	PYTHONPATH=$(LOCAL_PYTHONPATH) $(BIN)/python -m tests.bench $(BENCH_ARGS)

# README.md is the front page; docs/ holds the rest (mkdocs.yml). --strict turns every
# warning into a failure: a broken link or anchor, a page left out of the nav. Not --quiet:
# it drops warnings before --strict counts them, and the build then passes. NO_MKDOCS_2_WARNING
# silences Material's end-of-life banner only.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(SECURITY_VENV) .aws-sam .pytest_cache .ruff_cache .site
