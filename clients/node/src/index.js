// Broker: every backend route of Insightly Connect, SigV4-signed (service execute-api) with the
// AWS SDK v3 signer over the built-in fetch. The same interface as the Python client, in camelCase.
//
// Retries: the broker already retries Insightly and the OAuth provider; this client retries only
// the broker itself, and only when that is safe: a call that never reached it (no connection
// could be made), or an idempotent call (GET, PUT, DELETE, a forced refresh, an update) that met a
// passing state of the broker (refresh_in_progress, refresh_conflict, storage_unavailable,
// vault_unavailable) or API Gateway's throttling or 5xx. A Retry-After is waited out when it is
// at most maxRetryWaitMs; a longer one ends the retries and is on the error (error.retryAfter).
import { createHash, createHmac } from "node:crypto";
import { defaultProvider } from "@aws-sdk/credential-provider-node";
import { SignatureV4 } from "@smithy/signature-v4";
import { BadRequestError, errorFor, retryAfter } from "./errors.js";
import * as webhooks from "./webhooks.js";

export * from "./errors.js";
export { webhooks };

const SERVICE = "execute-api";
const IDEMPOTENT_METHODS = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);
// The broker's own passing states: the same call succeeds a moment later.
const TRANSIENT_CODES = new Set(["refresh_in_progress", "refresh_conflict", "storage_unavailable", "vault_unavailable"]);
const GATEWAY_TRANSIENT_STATUSES = new Set([429, 502, 503, 504]); // API Gateway's own answers ({"message"})
const BACKOFF_BASE_MS = 200;
const BACKOFF_CAP_MS = 2000;
const EXECUTE_API_HOST = /^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$/;
// Connection errors from undici that mean the request never left this machine.
const NEVER_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT"]);

/** SHA-256 and HMAC-SHA256 for the signer, from node:crypto (no extra dependency). */
class Sha256 {
  constructor(secret) {
    this.hash = secret === undefined ? createHash("sha256") : createHmac("sha256", bytes(secret));
  }

  update(data) {
    this.hash.update(bytes(data));
  }

  async digest() {
    return new Uint8Array(this.hash.digest());
  }
}

function bytes(data) {
  if (typeof data === "string") return Buffer.from(data, "utf8");
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.from(data);
}

/** RFC 3986 encoding, as SigV4 canonicalises (unreserved characters kept, everything else %XX). */
function encode(value) {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function given(fields) {
  // undefined and null mean "not sent", so the broker keeps its default
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined && value !== null));
}

function backoffMs(attempt) {
  // capped full jitter: spreads the retries of many callers
  return Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1));
}

function neverSent(error) {
  for (let cause = error; cause; cause = cause.cause) {
    if (NEVER_SENT.has(cause.code)) return true;
  }
  return false;
}

const camel = (name) => name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
const TIME_FIELD = /(_at|_since)$/;
// User data whose keys are kept as they are.
const AS_GIVEN = new Set(["tags", "metadata", "raw"]);

/** The broker's JSON in camelCase, times as Date; tags and metadata as given; the whole JSON in `raw`. */
function fromJson(data, { raw = true } = {}) {
  const result = {};
  for (const [name, value] of Object.entries(data)) {
    if (AS_GIVEN.has(name)) result[camel(name)] = value;
    else if (TIME_FIELD.test(name)) result[camel(name)] = typeof value === "string" ? new Date(value) : value;
    else if (value && typeof value === "object" && !Array.isArray(value)) result[camel(name)] = fromJson(value, { raw: false });
    else result[camel(name)] = value;
  }
  if (raw) Object.defineProperty(result, "raw", { value: data, enumerable: false });
  return result;
}

/** A token: the credential fields stay out of JSON.stringify and util.inspect (no accidental logging). */
function tokenFrom(data) {
  const token = fromJson(data);
  for (const secret of ["authorization", "accessToken", "apiKey"]) {
    if (secret in token) Object.defineProperty(token, secret, { value: token[secret], enumerable: false });
  }
  return token;
}

function regionOf(apiUrl) {
  const found = EXECUTE_API_HOST.exec(new URL(apiUrl).hostname);
  return found ? found[1] : undefined;
}

/** The query of a path written as "Contacts?top=5" plus `query`, as [name, value] pairs (decoded). */
function queryPairs(rawQuery, query) {
  const pairs = [];
  for (const part of (rawQuery || "").split("&")) {
    if (!part) continue;
    const at = part.indexOf("=");
    const name = at < 0 ? part : part.slice(0, at);
    pairs.push([decodeURIComponent(name), at < 0 ? "" : decodeURIComponent(part.slice(at + 1))]);
  }
  for (const [name, value] of Object.entries(query ?? {})) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null) pairs.push([name, String(one)]);
    }
  }
  return pairs;
}

export class Broker {
  /**
   * @param {string} apiUrl the stack's ApiUrl output (or `make local`'s gateway)
   * @param {object} [options]
   * @param {string} [options.region] default: from an execute-api URL, then AWS_REGION / AWS_DEFAULT_REGION
   * @param {*} [options.credentials] an AWS SDK v3 credential provider or identity (default: the default chain)
   */
  constructor(apiUrl, { region, credentials, timeoutMs = 30_000, maxAttempts = 3, maxRetryWaitMs = 10_000,
    fetch = globalThis.fetch } = {}) {
    this.apiUrl = apiUrl.replace(/\/+$/, "");
    this.region = region ?? regionOf(this.apiUrl) ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
    if (!this.region) throw new Error("no region: pass {region}, or use the execute-api URL, or set AWS_REGION");
    this.timeoutMs = timeoutMs;
    this.maxAttempts = Math.max(1, maxAttempts);
    this.maxRetryWaitMs = maxRetryWaitMs;
    this.fetch = fetch;
    this.signer = new SignatureV4({
      service: SERVICE, region: this.region, credentials: credentials ?? defaultProvider(), sha256: Sha256,
      applyChecksum: false,
    });
  }

  // -- connect ------------------------------------------------------------------------------------

  /** POST /connect-sessions: where to send the user's browser to connect Insightly. */
  async createConnectSession(connectionId, returnTo, { authMode, tags, display, quotaGroup } = {}) {
    const body = given({ connection_id: connectionId, return_to: returnTo, auth_mode: authMode, tags, display,
      quota_group: quotaGroup });
    return fromJson(await this.#call("POST", "/connect-sessions", { body, idempotent: false }));
  }

  /** POST /connect-sessions/{sessionId}/complete, only for the sessionId your user's own session holds. */
  async completeConnectSession(sessionId, completionCode) {
    const path = `/connect-sessions/${encode(sessionId)}/complete`;
    return fromJson(await this.#call("POST", path, { body: { completion_code: completionCode }, idempotent: false }));
  }

  /** PUT /connections/{id}/api-key: connect with a key your own UI collected (give pod or apiUrl). */
  async putApiKey(connectionId, apiKey, { pod, apiUrl, tags } = {}) {
    const body = given({ api_key: apiKey, pod, api_url: apiUrl, tags });
    return fromJson(await this.#call("PUT", this.#connectionPath(connectionId, "api-key"), { body }));
  }

  // -- connections --------------------------------------------------------------------------------

  /** GET /connections/{id}: status, Insightly user, quota; never a credential. */
  async status(connectionId) {
    return fromJson(await this.#call("GET", this.#connectionPath(connectionId)));
  }

  /** GET /connections/{id}/token: a credential that works now (refreshed first when due). */
  async token(connectionId) {
    return tokenFrom(await this.#call("GET", this.#connectionPath(connectionId, "token")));
  }

  /** POST /connections/{id}/refresh: refresh now (oauth2) or check the key now (api_key). */
  async refresh(connectionId) {
    return tokenFrom(await this.#call("POST", this.#connectionPath(connectionId, "refresh"), { idempotent: true }));
  }

  /** PATCH /connections/{id}: replaces what is given (tags, metadata, quotaGroup), keeps the rest. */
  async update(connectionId, { tags, metadata, quotaGroup } = {}) {
    const body = given({ tags, metadata, quota_group: quotaGroup });
    // Replacing with the same values again changes nothing: safe to retry.
    return fromJson(await this.#call("PATCH", this.#connectionPath(connectionId), { body, idempotent: true }));
  }

  /** DELETE /connections/{id}: revoke when the provider allows, then forget the connection. */
  async delete(connectionId) {
    await this.#call("DELETE", this.#connectionPath(connectionId));
  }

  /**
   * GET /connections, every page (it follows next_cursor). One filter at a time: status, authMode
   * or tag ({[ListTagKey]: value}). `limit` is the page size (1-100).
   */
  async *connections({ status, authMode, tag, limit } = {}) {
    const query = given({ status, auth_mode: authMode, limit: limit === undefined ? undefined : String(limit) });
    for (const [key, value] of Object.entries(tag ?? {})) query[`tag.${key}`] = value;
    let cursor = null;
    do {
      const page = await this.#call("GET", "/connections", { query: cursor ? { ...query, cursor } : query });
      for (const item of page.connections ?? []) yield fromJson(item);
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** Insightly's API through the broker, with the connection's credential injected there. */
  proxy(connectionId, { priority } = {}) {
    return new ProxySession(this, connectionId, priority);
  }

  // -- plumbing -----------------------------------------------------------------------------------

  #connectionPath(connectionId, ...rest) {
    return ["/connections", encode(connectionId), ...rest].join("/");
  }

  /** @internal the proxy's path prefix */
  proxyPath(connectionId) {
    return this.#connectionPath(connectionId, "proxy");
  }

  async #call(method, path, { body, query, idempotent = IDEMPOTENT_METHODS.has(method) } = {}) {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const headers = data === undefined ? {} : { "content-type": "application/json" };
    const response = await this.send(method, path, { query: Object.entries(query ?? {}), body: data, headers,
      idempotent });
    const text = await response.text();
    if (response.status >= 400) throw errorFor(response, text);
    return text ? JSON.parse(text) : null;
  }

  /**
   * One signed call, retried as the module comment says. `path` is already percent-encoded and
   * is signed and sent as it is.
   * @internal
   */
  async send(method, path, { query = [], body, headers = {}, idempotent, proxied = false, timeoutMs } = {}) {
    const url = new URL(this.apiUrl + path);
    const search = query.map(([name, value]) => `${encode(name)}=${encode(value)}`).join("&");
    const signedQuery = {};
    for (const [name, value] of query) {
      signedQuery[name] = name in signedQuery ? [].concat(signedQuery[name], value) : value;
    }
    for (let attempt = 1; ; attempt++) {
      const signed = await this.signer.sign({
        method, protocol: url.protocol, hostname: url.hostname, port: url.port ? Number(url.port) : undefined,
        path: url.pathname, query: signedQuery, headers: { ...headers, host: url.host }, body,
      });
      const { host, ...sent } = signed.headers; // fetch sets Host from the URL, the same value
      let response;
      try {
        response = await this.fetch(`${url.origin}${url.pathname}${search ? `?${search}` : ""}`, {
          method, headers: sent, body, redirect: "manual", signal: AbortSignal.timeout(timeoutMs ?? this.timeoutMs),
        });
      } catch (error) {
        if (attempt >= this.maxAttempts || !(idempotent || neverSent(error))) throw error;
        await sleep(backoffMs(attempt));
        continue;
      }
      const waitMs = await this.#retryWait(response, attempt, idempotent, proxied);
      if (waitMs === null) return response;
      await response.body?.cancel();
      await sleep(waitMs);
    }
  }

  async #retryWait(response, attempt, idempotent, proxied) {
    if (response.status < 400 || attempt >= this.maxAttempts || !idempotent) return null;
    let code = proxied ? response.headers.get("x-broker-error") : null;
    if (!proxied) {
      try {
        const parsed = await response.clone().json();
        code = typeof parsed?.error === "string" ? parsed.error : null;
      } catch {
        code = null;
      }
    }
    // API Gateway's own answers have no code; through the proxy they cannot be told from
    // Insightly's, which the broker has retried already (and whose 429 is a daily quota).
    const transient = TRANSIENT_CODES.has(code) ||
      (!proxied && code === null && GATEWAY_TRANSIENT_STATUSES.has(response.status));
    if (!transient) return null;
    const asked = retryAfter(response.headers.get("retry-after"));
    if (asked === null) return backoffMs(attempt);
    return asked * 1000 <= this.maxRetryWaitMs ? asked * 1000 : null;
  }
}

/**
 * Insightly's API through the broker: get("Contacts", {query: {top: 5}}), post("Contacts", {json}).
 * Answers are Insightly's own fetch Responses (4xx and 5xx included); the broker's own refusals
 * throw BrokerError subclasses (NeedsReauthError, QuotaExhaustedError, ...). The path is sent as
 * written, each character percent-encoded. A `.`, `..` or empty segment throws BadRequestError
 * invalid_path (what the broker answers to them) without a call: fetch's URL parser would resolve
 * them into another route.
 */
export class ProxySession {
  constructor(broker, connectionId, priority) {
    this.broker = broker;
    this.connectionId = connectionId;
    this.priority = priority;
  }

  async request(method, path, { query, body, json, headers, timeoutMs } = {}) {
    method = method.toUpperCase();
    const at = path.indexOf("?");
    const [pathOnly, rawQuery] = at < 0 ? [path, ""] : [path.slice(0, at), path.slice(at + 1)];
    const segments = pathOnly.replace(/^\/+/, "").split("/");
    if (segments.some((segment) => segment === "" || segment === "." || segment === "..")) {
      throw new BadRequestError(400, "invalid_path", "the path has an empty, . or .. segment; nothing was sent");
    }
    const sent = { accept: "application/json", ...lowerCased(headers) };
    if (json !== undefined) {
      body = JSON.stringify(json);
      sent["content-type"] ??= "application/json";
    }
    if (this.priority) sent["x-broker-priority"] = this.priority;
    const fullPath = `${this.broker.proxyPath(this.connectionId)}/${segments.map(encode).join("/")}`;
    const response = await this.broker.send(method, fullPath, {
      query: queryPairs(rawQuery, query), body, headers: sent, idempotent: IDEMPOTENT_METHODS.has(method),
      proxied: true, timeoutMs,
    });
    const code = response.headers.get("x-broker-error");
    if (code) throw errorFor(response, await response.text(), code);
    return response;
  }

  get(path, options) { return this.request("GET", path, options); }

  post(path, options) { return this.request("POST", path, options); }

  put(path, options) { return this.request("PUT", path, options); }

  patch(path, options) { return this.request("PATCH", path, options); }

  delete(path, options) { return this.request("DELETE", path, options); }
}

function lowerCased(headers) {
  return Object.fromEntries(Object.entries(headers ?? {}).map(([name, value]) => [name.toLowerCase(), value]));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
