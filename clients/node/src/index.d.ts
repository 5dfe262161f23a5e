// Types of insightly-connect-client (src/index.js).

export type AuthMode = "oauth2" | "api_key";
export type Priority = "interactive" | "background";
export type Display = "redirect" | "popup";

/** AWS credentials, as the AWS SDK v3 providers answer them. */
export interface Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  expiration?: Date;
}

export interface BrokerOptions {
  /** Default: from an execute-api URL, then AWS_REGION / AWS_DEFAULT_REGION. */
  region?: string;
  /** An AWS SDK v3 credential provider or identity. Default: the default chain (@aws-sdk/credential-provider-node). */
  credentials?: Credentials | (() => Promise<Credentials>);
  /** Per attempt. Default 30000: a proxied call may include a refresh and the broker's retries. */
  timeoutMs?: number;
  /** Default 3. */
  maxAttempts?: number;
  /** A longer Retry-After ends the retries (the error has retryAfter). Default 10000. */
  maxRetryWaitMs?: number;
  /** Default: the built-in fetch. */
  fetch?: typeof fetch;
}

/** Keep sessionId in your user's own server-side session; send the browser to connectUrl. */
export interface ConnectSession {
  sessionId: string;
  connectUrl: string;
  authMode: AuthMode;
  expiresAt: Date;
  readonly raw: Record<string, unknown>;
}

/** A credential that works now: call `${apiBaseUrl}/<path>` with `Authorization: ${authorization}`. */
export interface Token {
  connectionId: string;
  authMode: AuthMode;
  apiBaseUrl: string;
  /** Not enumerable: JSON.stringify and console.log leave it out. */
  readonly authorization: string;
  expiresAt: Date | null;
  readonly accessToken?: string;
  tokenType?: string;
  readonly apiKey?: string;
  readonly raw: Record<string, unknown>;
}

/** The status JSON of a connection (docs/http-api.md); never a credential. */
export interface Connection {
  connectionId: string;
  status: "active" | "needs_reauth";
  authMode: AuthMode;
  providerUser: { id?: string | number; email?: string; name?: string } | null;
  scopes: string[];
  tags: Record<string, string>;
  metadata: Record<string, unknown> | null;
  quotaGroup?: string | null;
  pod: string | null;
  apiBaseUrl: string | null;
  rateLimit: { limit: number | null; remaining: number | null; observedAt: Date | null } | null;
  lastError: { code: string; message: string; at: Date } | null;
  expiresAt: Date | null;
  lastRefreshedAt: Date | null;
  nextRefreshAt: Date | null;
  lastCheckedAt: Date | null;
  connectedAt: Date | null;
  createdAt: Date | null;
  failingSince: Date | null;
  /** Fields added by a newer broker arrive camelCased too. */
  [field: string]: unknown;
  readonly raw: Record<string, unknown>;
}

export interface ProxyRequestOptions {
  /** Added to a query written in the path ("Contacts?top=5"). */
  query?: Record<string, string | number | boolean | Array<string | number | boolean>>;
  body?: string | Uint8Array;
  /** Sent as JSON (sets Content-Type). */
  json?: unknown;
  headers?: Record<string, string>;
  timeoutMs?: number;
}

export class ProxySession {
  readonly connectionId: string;
  readonly priority?: Priority;
  /** Insightly's own answer (4xx and 5xx included); throws BrokerError for the broker's own refusals. */
  request(method: string, path: string, options?: ProxyRequestOptions): Promise<Response>;
  get(path: string, options?: ProxyRequestOptions): Promise<Response>;
  post(path: string, options?: ProxyRequestOptions): Promise<Response>;
  put(path: string, options?: ProxyRequestOptions): Promise<Response>;
  patch(path: string, options?: ProxyRequestOptions): Promise<Response>;
  delete(path: string, options?: ProxyRequestOptions): Promise<Response>;
}

export class Broker {
  constructor(apiUrl: string, options?: BrokerOptions);
  readonly apiUrl: string;
  readonly region: string;
  createConnectSession(connectionId: string, returnTo: string, options?: {
    authMode?: AuthMode; tags?: Record<string, string>; display?: Display; quotaGroup?: string;
  }): Promise<ConnectSession>;
  completeConnectSession(sessionId: string, completionCode: string): Promise<Connection>;
  putApiKey(connectionId: string, apiKey: string, options?: {
    pod?: string; apiUrl?: string; tags?: Record<string, string>;
  }): Promise<Connection>;
  status(connectionId: string): Promise<Connection>;
  token(connectionId: string): Promise<Token>;
  refresh(connectionId: string): Promise<Token>;
  update(connectionId: string, options: {
    tags?: Record<string, string>; metadata?: Record<string, unknown>; quotaGroup?: string;
  }): Promise<Connection>;
  delete(connectionId: string): Promise<void>;
  /** Every page, following next_cursor. One filter at a time; tag is {[ListTagKey]: value}. */
  connections(filter?: {
    status?: "active" | "needs_reauth"; authMode?: AuthMode; tag?: Record<string, string>; limit?: number;
  }): AsyncGenerator<Connection, void, undefined>;
  proxy(connectionId: string, options?: { priority?: Priority }): ProxySession;
}

export class BrokerError extends Error {
  constructor(status: number, code: string | null, message: string,
              options?: { retryAfter?: number | null; response?: Response });
  readonly status: number;
  /** The broker's error code; null for API Gateway's own answers. */
  readonly code: string | null;
  readonly brokerMessage: string;
  /** Seconds the answer asked to wait, or null. */
  readonly retryAfter: number | null;
  readonly response?: Response;
}
export class BadRequestError extends BrokerError {}
export class AccessDeniedError extends BrokerError {}
export class NotFoundError extends BrokerError {}
export class ConflictError extends BrokerError {}
export class NeedsReauthError extends ConflictError {}
export class ApiKeyRejectedError extends BrokerError {}
export class QuotaExhaustedError extends BrokerError {}
export class QuotaReservedError extends QuotaExhaustedError {}
export class ServerError extends BrokerError {}
export class ClientRejectedError extends ServerError {}
export class UnavailableError extends ServerError {}

export interface WebhookEvent {
  id: string;
  type: string;
  connection_id: string | null;
  status: string;
  reason: string | null;
  at: string;
  tags: Record<string, string>;
  [field: string]: unknown;
}

export declare const webhooks: {
  /** The event if the signature and timestamp hold; throws WebhookVerificationError otherwise. */
  verify(secret: string, headers: Headers | Record<string, string | string[] | undefined>,
         body: string | Uint8Array): WebhookEvent;
  WebhookVerificationError: new (message?: string) => Error;
};
