// `npm test`: node's test runner over test/*.test.mjs, against a local stack.
//
// Without BROKER_URL this starts one on free ports (tests/clients/stack.py: the repository's
// Docker-free local stack plus a webhook inbox) with the repository's Python (.venv, made by
// `make install` at the root; PYTHON overrides it) and stops it afterwards. With BROKER_URL
// set, the tests use that stack instead, and need the rest of what stack.py prints
// (STANDIN_URL, PROVIDER_BASE_URL, RETURN_TO, WEBHOOK_INBOX_URL, WEBHOOK_SECRET, LIST_TAG_KEY,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repository = resolve(here, "../../..");

async function startStack() {
  const venvPython = join(repository, ".venv", "bin", "python");
  const python = process.env.PYTHON ?? (existsSync(venvPython) ? venvPython : null);
  if (!python) {
    console.error("npm test starts the local stack with the repository's Python: run `make install` at the " +
      "repository root first (or set PYTHON, or BROKER_URL and the rest; see test/run.mjs).");
    process.exit(2);
  }
  const stack = spawn(python, ["-m", "tests.clients.stack"], {
    cwd: repository, stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, PYTHONPATH: ["layers/common", ".", "clients/python/src", process.env.PYTHONPATH].filter(Boolean).join(":") },
  });
  const exited = new Promise((done) => stack.once("exit", done));
  const firstLine = await new Promise((done) => {
    const lines = createInterface({ input: stack.stdout });
    lines.once("line", (line) => { lines.close(); done(line); });
    stack.once("exit", () => done(null));
  });
  if (!firstLine) {
    console.error("the local stack did not start (see above)");
    process.exit(1);
  }
  return { env: JSON.parse(firstLine), stop: async () => { stack.stdin.end(); await exited; } };
}

const stack = process.env.BROKER_URL ? null : await startStack();
const files = readdirSync(here).filter((name) => name.endsWith(".test.mjs")).sort().map((name) => join(here, name));
const runner = spawn(process.execPath, ["--test", ...files], {
  stdio: "inherit", env: { ...process.env, ...(stack?.env ?? {}) },
});
const code = await new Promise((done) => runner.once("exit", (status, signal) => done(status ?? (signal ? 1 : 0))));
await stack?.stop();
process.exit(code);
