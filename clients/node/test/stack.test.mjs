// The Node client against the local stack (started by test/run.mjs): what a SaaS backend does with
// it, over real HTTP through the SigV4-checking gateway, the stand-in playing Insightly.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Broker, BadRequestError, NeedsReauthError, NotFoundError, webhooks } from "insightly-connect-client";

const NEEDED = ["BROKER_URL", "STANDIN_URL", "PROVIDER_BASE_URL", "RETURN_TO", "WEBHOOK_INBOX_URL", "WEBHOOK_SECRET",
  "LIST_TAG_KEY", "AWS_REGION"];
const missing = NEEDED.filter((name) => !process.env[name]);
if (missing.length) throw new Error(`run these tests with npm test (it starts the stack); missing ${missing.join(", ")}`);
const env = process.env;

let broker;
before(() => { broker = new Broker(env.BROKER_URL, { region: env.AWS_REGION }); });
after(() => standin("POST", "reset"));

async function standin(method, path, body) {
  const answer = await fetch(`${env.STANDIN_URL}/_control/${path}`, {
    method, headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(answer.ok, `stand-in ${path}: ${answer.status}`);
  const text = await answer.text();
  return text ? JSON.parse(text) : {};
}

/** The user's browser, hop by hop: connectUrl -> the stand-in's consent (approved) -> the broker's callback. */
async function approveInBrowser(connectUrl) {
  const toProvider = await fetch(connectUrl, { redirect: "manual" });
  assert.equal(toProvider.status, 302);
  const cookie = toProvider.headers.getSetCookie().map((line) => line.split(";")[0]).join("; ");
  const consent = Object.fromEntries(new URL(toProvider.headers.get("location")).searchParams);
  const back = await fetch(`${env.PROVIDER_BASE_URL}/oauth2/authorize/decision`, {
    method: "POST", body: new URLSearchParams({ ...consent, decision: "approve" }), redirect: "manual",
  });
  const landing = await fetch(back.headers.get("location"), { redirect: "manual", headers: { cookie } });
  assert.equal(landing.status, 302);
  return Object.fromEntries(new URL(landing.headers.get("location")).searchParams);
}

async function listed(filter) {
  const ids = [];
  for await (const connection of broker.connections(filter)) ids.push(connection.connectionId);
  return ids;
}

test("an OAuth connection from connect session to delete", async () => {
  const tag = env.LIST_TAG_KEY;
  const session = await broker.createConnectSession("node-oauth", env.RETURN_TO, { authMode: "oauth2", tags: { [tag]: "acme" } });
  assert.equal(session.authMode, "oauth2");

  const returned = await approveInBrowser(session.connectUrl);
  assert.equal(returned.status, "pending");
  assert.equal(returned.session_id, session.sessionId);
  const connection = await broker.completeConnectSession(session.sessionId, returned.completion_code);

  assert.equal(connection.status, "active");
  assert.equal(connection.providerUser.email, "ada@example.com");
  assert.ok(connection.connectedAt instanceof Date);
  const token = await broker.token("node-oauth");
  assert.match(token.authorization, /^Bearer /);
  const insightly = broker.proxy("node-oauth");
  const me = await insightly.get("Users/Me");
  assert.equal(me.status, 200);
  assert.equal((await me.json()).EMAIL_ADDRESS, "ada@example.com");
  const created = await insightly.post("Contacts", { json: { FIRST_NAME: "Grace", LAST_NAME: "Hopper" } });
  const contact = await created.json();
  assert.ok(created.ok && contact.CONTACT_ID);
  assert.equal((await (await insightly.get(`Contacts/${contact.CONTACT_ID}`)).json()).LAST_NAME, "Hopper");
  assert.ok((await listed({ tag: { [tag]: "acme" } })).includes("node-oauth"));
  assert.ok(!(await listed({ tag: { [tag]: "other" } })).includes("node-oauth"));
  const updated = await broker.update("node-oauth", { tags: { [tag]: "acme", plan: "pro" }, metadata: { seats: 3 } });
  assert.deepEqual(updated.tags, { [tag]: "acme", plan: "pro" });
  assert.deepEqual((await broker.status("node-oauth")).metadata, { seats: 3 });
  const refreshed = await broker.refresh("node-oauth");
  assert.notEqual(refreshed.accessToken, token.accessToken);
  await broker.delete("node-oauth");
  await assert.rejects(broker.status("node-oauth"),
    (error) => error instanceof NotFoundError && error.status === 404 && error.code === "connection_not_found");
});

test("an API key connection through every route", async () => {
  const account = await standin("POST", "api-keys", { pod: "na1" });
  const connection = await broker.putApiKey("node-key", account.api_key, { apiUrl: account.api_url });
  assert.equal(connection.authMode, "api_key");
  assert.equal(connection.pod, "na1");

  const token = await broker.token("node-key");
  assert.match(token.authorization, /^Basic /);
  const contacts = await broker.proxy("node-key").get("Contacts", { query: { top: 1, count_total: true } });
  assert.equal(contacts.status, 200);
  assert.ok(contacts.headers.get("x-total-count"));
  assert.equal((await broker.refresh("node-key")).authorization, token.authorization);
  await broker.delete("node-key");
});

test("a regenerated key throws NeedsReauthError on every route", async () => {
  const account = await standin("POST", "api-keys", { pod: "na1" });
  await broker.putApiKey("node-revoked", account.api_key, { pod: "na1" });
  await standin("POST", "api-keys/regenerate", { account: account.account });

  const needsReauth = (error) => error instanceof NeedsReauthError && error.status === 409 && error.code === "needs_reauth";
  await assert.rejects(broker.refresh("node-revoked"), needsReauth);
  await assert.rejects(broker.token("node-revoked"), needsReauth);
  await assert.rejects(broker.proxy("node-revoked").get("Users/Me"), needsReauth);
  await broker.delete("node-revoked");
});

test("an odd path the broker refuses is sent as written", async () => {
  const account = await standin("POST", "api-keys", { pod: "na1" });
  await broker.putApiKey("node-odd", account.api_key, { pod: "na1" });
  const { calls } = await standin("GET", "state");

  for (const odd of ["%2e%2e/token", "Contacts/@evil", "Contacts/a\\b"]) {
    await assert.rejects(broker.proxy("node-odd").get(odd),
      (error) => error instanceof BadRequestError && error.code === "invalid_path", odd);
  }
  assert.deepEqual((await standin("GET", "state")).calls, calls); // nothing reached Insightly
  await broker.delete("node-odd");
});

test("a webhook from the stack verifies, and a tampered one does not", async () => {
  const account = await standin("POST", "api-keys", { pod: "na1" });
  await broker.putApiKey("node-hook", account.api_key, { pod: "na1" });

  const delivery = await deliveryOf("node-hook", "Connected");
  const event = webhooks.verify(env.WEBHOOK_SECRET, delivery.headers, delivery.body);
  assert.equal(event.type, "Connected");
  assert.equal(event.connection_id, "node-hook");
  const forged = JSON.stringify({ ...JSON.parse(delivery.body), type: "Deleted" });
  assert.throws(() => webhooks.verify(env.WEBHOOK_SECRET, delivery.headers, forged), webhooks.WebhookVerificationError);
  await broker.delete("node-hook");
});

async function deliveryOf(connectionId, type, seconds = 20) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    for (const delivery of await (await fetch(env.WEBHOOK_INBOX_URL)).json()) {
      const body = JSON.parse(delivery.body);
      if (body.connection_id === connectionId && body.type === type) return delivery;
    }
    await sleep(200);
  }
  throw new Error(`no ${type} webhook for ${connectionId}`);
}

test("the README's example runs against the stack", async () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const example = readme.match(/```js\n([\s\S]*?)```/)[1]
    .replace("http://127.0.0.1:3000", env.BROKER_URL).replace("http://127.0.0.1:8080/", env.RETURN_TO);
  assert.equal(example.trim().split("\n").length, 10);
  const file = new URL(`./readme-example-${process.pid}.mjs`, import.meta.url); // inside the package: it imports itself
  writeFileSync(file, example);
  try {
    assert.match(await run(file), /demo-user is not connected yet/);
    const account = await standin("POST", "api-keys", { pod: "na1" });
    await broker.putApiKey("demo-user", account.api_key, { pod: "na1" });
    assert.match(await run(file), /Insightly says: \S+@\S+/);
  } finally {
    rmSync(file);
    await broker.delete("demo-user").catch(() => {});
  }
});

async function run(file) {
  const { stdout } = await promisify(execFile)(process.execPath, [fileURLToPath(file)], { env: process.env });
  return stdout;
}

test("npm pack ships what the package exports", async () => {
  const { stdout } = await promisify(execFile)("npm", ["pack", "--dry-run", "--json"],
    { cwd: fileURLToPath(new URL("..", import.meta.url)) });
  const files = JSON.parse(stdout)[0].files.map((file) => file.path);
  const manifest = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  for (const target of Object.values(manifest.exports["."])) assert.ok(files.includes(target.replace("./", "")), target);
  for (const module of ["src/errors.js", "src/webhooks.js", "README.md"]) assert.ok(files.includes(module), module);
  assert.ok(!files.some((file) => file.startsWith("test/")));
});
