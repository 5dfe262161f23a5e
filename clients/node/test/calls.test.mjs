// The Node client's requests and its handling of answers, against a scripted fetch (no stack):
// one method per route of docs/openapi.yaml, what is retried and what is not, which error type
// each refusal raises, and the fields it only passes through (quotaGroup, the priority).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { parse } from "yaml";
import {
  AccessDeniedError, ApiKeyRejectedError, BadRequestError, Broker, ClientRejectedError, NeedsReauthError,
  NotFoundError, QuotaExhaustedError, QuotaReservedError, ServerError, UnavailableError,
} from "insightly-connect-client";

const API = "https://abc123.execute-api.eu-west-1.amazonaws.com";
const DOCUMENT = parse(readFileSync(new URL("../../../docs/openapi.yaml", import.meta.url), "utf8"));
const ANY_METHOD = "x-amazon-apigateway-any-method";
const ANSWER = {
  connection_id: "u-1", status: "active", auth_mode: "oauth2", session_id: "s".repeat(43),
  connect_url: `${API}/oauth/authorize?session=x`, api_base_url: "https://api.insightly.com/v3.1",
  authorization: "Bearer t", expires_at: "2026-01-01T00:00:00Z", connections: [], next_cursor: null,
};

// One client call per backend operation of docs/openapi.yaml (operationId -> call).
const CALLS = {
  createConnectSession: (b) => b.createConnectSession("u-1", "https://app.example.com/"),
  completeConnectSession: (b) => b.completeConnectSession("s".repeat(43), "c".repeat(43)),
  listConnections: async (b) => { for await (const _ of b.connections({ status: "active" })); },
  getConnection: (b) => b.status("u-1"),
  patchConnection: (b) => b.update("u-1", { tags: { plan: "pro" } }),
  deleteConnection: (b) => b.delete("u-1"),
  putApiKey: (b) => b.putApiKey("u-1", "k".repeat(36), { pod: "na1" }),
  getToken: (b) => b.token("u-1"),
  forceRefresh: (b) => b.refresh("u-1"),
  proxy: (b) => b.proxy("u-1").request("OPTIONS", "Contacts"),
  proxyGet: (b) => b.proxy("u-1").get("Contacts/42"),
  proxyPost: (b) => b.proxy("u-1").post("Contacts", { json: { FIRST_NAME: "Ada" } }),
  proxyPut: (b) => b.proxy("u-1").put("Contacts", { json: { CONTACT_ID: 42 } }),
  proxyPatch: (b) => b.proxy("u-1").patch("Contacts", { json: { CONTACT_ID: 42 } }),
  proxyDelete: (b) => b.proxy("u-1").delete("Contacts/42"),
};

/** A fetch that answers from a script (the last entry repeats) and records every request. */
function scripted(...answers) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url: new URL(url), method: init.method, headers: init.headers, body: init.body });
    const next = answers.length > 1 ? answers.shift() : answers[0];
    if (next instanceof Error) throw next;
    const [status, body, headers] = next;
    return new Response(status === 204 ? null : JSON.stringify(body ?? {}), { status, headers });
  };
  return { fetch, requests };
}

function broker(fetch, options = {}) {
  return new Broker(API, { credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret" }, fetch,
    maxRetryWaitMs: 1500, ...options });
}

function backendOperations() {
  const found = {};
  for (const [path, item] of Object.entries(DOCUMENT.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      if (operation?.operationId && JSON.stringify(operation.security) === JSON.stringify([{ sigv4: [] }])) {
        found[operation.operationId] = { method: method === ANY_METHOD ? "ANY" : method.toUpperCase(), path };
      }
    }
  }
  return found;
}

function routed(method, path) {
  const matches = Object.entries(backendOperations()).filter(([, route]) => {
    const pattern = route.path.replace(/\{(\w+)\}/g, (_, name) => (name === "path" ? ".+" : "[^/]+"));
    return new RegExp(`^${pattern}$`).test(path) && (route.method === method || route.method === "ANY");
  });
  // A concrete method wins over ANY, as in the document.
  matches.sort(([, a], [, b]) => (a.method === "ANY") - (b.method === "ANY"));
  return matches[0]?.[0];
}

test("every backend route of the OpenAPI document has a client method", async () => {
  const missing = Object.keys(backendOperations()).filter((id) => !(id in CALLS));
  assert.deepEqual(missing, [], "routes in docs/openapi.yaml without a client method");
  for (const [operationId, call] of Object.entries(CALLS)) {
    const { fetch, requests } = scripted([200, ANSWER]);
    await call(broker(fetch));
    const sent = requests.at(-1);
    assert.equal(routed(sent.method, sent.url.pathname), operationId, `${sent.method} ${sent.url.pathname}`);
    assert.match(sent.headers.authorization, /^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/eu-west-1\/execute-api\//);
  }
});

test("quotaGroup and the priority are passed through, the priority signed", async () => {
  const { fetch, requests } = scripted([201, ANSWER], [200, ANSWER], [200, {}]);
  const client = broker(fetch);

  await client.createConnectSession("u-1", "https://app.example.com/", { quotaGroup: "customer-7" });
  await client.update("u-1", { quotaGroup: "customer-7" });
  await client.proxy("u-1", { priority: "background" }).get("Contacts");

  const [created, updated, proxied] = requests;
  assert.equal(JSON.parse(created.body).quota_group, "customer-7");
  assert.deepEqual(JSON.parse(updated.body), { quota_group: "customer-7" });
  assert.equal(proxied.headers["x-broker-priority"], "background");
  assert.match(proxied.headers.authorization, /x-broker-priority/);
});

test("fields not given are not sent", async () => {
  const { fetch, requests } = scripted([201, ANSWER]);
  await broker(fetch).createConnectSession("u-1", "https://app.example.com/");
  assert.deepEqual(JSON.parse(requests[0].body), { connection_id: "u-1", return_to: "https://app.example.com/" });
});

test("a passing state of the broker is retried after its Retry-After", async () => {
  const { fetch, requests } = scripted([503, { error: "refresh_in_progress", message: "busy" }, { "Retry-After": "1" }],
    [200, ANSWER]);
  const started = Date.now();

  const token = await broker(fetch).token("u-1");

  assert.equal(token.authorization, "Bearer t");
  assert.equal(requests.length, 2);
  assert.ok(Date.now() - started >= 1000);
});

test("API Gateway's throttling is retried with backoff", async () => {
  const { fetch, requests } = scripted([429, { message: "Too Many Requests" }], [200, ANSWER]);
  assert.equal((await broker(fetch).status("u-1")).status, "active");
  assert.equal(requests.length, 2);
});

test("a Retry-After longer than maxRetryWaitMs is not waited out", async () => {
  const { fetch, requests } = scripted([503, { error: "vault_unavailable", message: "later" }, { "Retry-After": "3600" }]);
  await assert.rejects(broker(fetch).token("u-1"), (error) => error instanceof UnavailableError && error.retryAfter === 3600);
  assert.equal(requests.length, 1);
});

test("retries stop after maxAttempts", async () => {
  const { fetch, requests } = scripted([503, { error: "storage_unavailable", message: "later" }]);
  await assert.rejects(async () => { for await (const _ of broker(fetch).connections()); }, UnavailableError);
  assert.equal(requests.length, 3);
});

test("calls that are not idempotent are sent once", async () => {
  const { fetch, requests } = scripted([503, { error: "storage_unavailable", message: "later" }]);
  const client = broker(fetch);
  await assert.rejects(client.createConnectSession("u-1", "https://app.example.com/"), UnavailableError);
  await assert.rejects(client.completeConnectSession("s".repeat(43), "c".repeat(43)), UnavailableError);
  assert.equal(requests.length, 2);
});

test("the provider's troubles, already retried by the broker, are not retried again", async () => {
  const { fetch, requests } = scripted([503, { error: "provider_unavailable", message: "Insightly is down" }]);
  await assert.rejects(broker(fetch).token("u-1"), UnavailableError);
  assert.equal(requests.length, 1);
});

test("a call that never reached the broker is retried even when not idempotent", async () => {
  const refused = new TypeError("fetch failed", { cause: Object.assign(new Error("connect"), { code: "ECONNREFUSED" }) });
  const { fetch, requests } = scripted(refused, [201, ANSWER]);
  assert.equal((await broker(fetch).createConnectSession("u-1", "https://app.example.com/")).sessionId, "s".repeat(43));
  assert.equal(requests.length, 2);
});

test("a POST whose answer was lost is not sent again", async () => {
  const lost = new TypeError("fetch failed", { cause: Object.assign(new Error("reset"), { code: "ECONNRESET" }) });
  const { fetch, requests } = scripted(lost, [201, ANSWER]);
  await assert.rejects(broker(fetch).createConnectSession("u-1", "https://app.example.com/"), TypeError);
  assert.equal(requests.length, 1);
});

test("Insightly's own answers come back as they are and are not retried", async () => {
  const { fetch, requests } = scripted([503, { message: "Insightly is down" }]);
  const answer = await broker(fetch).proxy("u-1").get("Contacts");
  assert.equal(answer.status, 503);
  assert.equal(requests.length, 1);
});

const REFUSALS = [
  [409, { error: "needs_reauth", message: "m" }, {}, NeedsReauthError, "needs_reauth"],
  [404, { error: "connection_not_found", message: "m" }, {}, NotFoundError, "connection_not_found"],
  [429, { error: "provider_quota_exhausted", message: "m" }, { "Retry-After": "120" }, QuotaExhaustedError,
    "provider_quota_exhausted"],
  [429, { error: "quota_reserved", message: "m" }, {}, QuotaReservedError, "quota_reserved"],
  [503, { error: "client_rejected", message: "m" }, {}, ClientRejectedError, "client_rejected"],
  [422, { error: "api_key_rejected", message: "m" }, {}, ApiKeyRejectedError, "api_key_rejected"],
  [400, { error: "invalid_tags", message: "m" }, {}, BadRequestError, "invalid_tags"],
  [403, { message: "The security token included in the request is invalid." }, {}, AccessDeniedError, null],
  [500, { error: "misconfigured", message: "m" }, {}, ServerError, "misconfigured"],
];

test("refusals throw the error type of their code", async () => {
  for (const [status, body, headers, Kind, code] of REFUSALS) {
    const { fetch } = scripted([status, body, headers]);
    await assert.rejects(broker(fetch).putApiKey("u-1", "k".repeat(36), { pod: "na1" }), (error) => {
      assert.equal(error.constructor, Kind);
      assert.deepEqual([error.status, error.code], [status, code]);
      return true;
    });
  }
});

test("the broker's refusals through the proxy throw by X-Broker-Error", async () => {
  const { fetch, requests } = scripted([429, { error: "provider_quota_exhausted", message: "m" },
    { "X-Broker-Error": "provider_quota_exhausted", "Retry-After": "120" }]);
  await assert.rejects(broker(fetch).proxy("u-1").get("Contacts"),
    (error) => error instanceof QuotaExhaustedError && error.retryAfter === 120);
  assert.equal(requests.length, 1);
});

test("the region is read from an execute-api URL", () => {
  assert.equal(new Broker("https://abc.execute-api.ap-southeast-2.amazonaws.com/", { credentials: {} }).region,
    "ap-southeast-2");
});

test("a path is sent as written, each character encoded", async () => {
  const { fetch, requests } = scripted([200, {}]);
  await broker(fetch).proxy("user@example.com").get("Contacts/x y/%2e?skip=0", { query: { top: 5 } });
  assert.equal(requests[0].url.href, `${API}/connections/user%40example.com/proxy/Contacts/x%20y/%252e?skip=0&top=5`);
});

test("dot and empty segments are refused without a call (fetch would resolve them into another route)", async () => {
  const { fetch, requests } = scripted([200, {}]);
  for (const odd of ["Contacts/../../token", "Contacts/./1", "Contacts//1"]) {
    await assert.rejects(broker(fetch).proxy("u-1").get(odd),
      (error) => error instanceof BadRequestError && error.code === "invalid_path");
  }
  assert.equal(requests.length, 0);
});

test("a token's credential stays out of JSON and console output", async () => {
  const { fetch } = scripted([200, { ...ANSWER, access_token: "t" }]);
  const token = await broker(fetch).token("u-1");
  assert.equal(token.authorization, "Bearer t");
  assert.doesNotMatch(JSON.stringify(token), /Bearer t|"t"/);
});
