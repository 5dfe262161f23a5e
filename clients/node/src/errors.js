// The broker's refusals as errors, one class per kind of answer a backend acts on. Every broker
// error is {"error": <code>, "message": <text>}; API Gateway's own answers (403 for a bad
// signature, 429 when throttled) are {"message"} and have no code. The class is chosen by the
// code first, then by the status.

export class BrokerError extends Error {
  /**
   * @param {number} status
   * @param {string | null} code the broker's machine-readable code (null for API Gateway's own answers)
   * @param {string} message
   * @param {{retryAfter?: number | null, response?: Response}} [options]
   */
  constructor(status, code, message, { retryAfter = null, response } = {}) {
    super(`${status} ${code ?? "error"}: ${message}`);
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.brokerMessage = message;
    /** Seconds the answer asked to wait, or null. */
    this.retryAfter = retryAfter;
    this.response = response;
  }
}

/** 400 (or 413): refused as it is; nothing was changed. Do not retry it. */
export class BadRequestError extends BrokerError {}
/** 403 from API Gateway: not signed with credentials allowed to call this route. */
export class AccessDeniedError extends BrokerError {}
/** 404 connection_not_found: no such connection. */
export class NotFoundError extends BrokerError {}
/** 409: the connection cannot serve this now. */
export class ConflictError extends BrokerError {}
/** 409 needs_reauth: the user has to connect again. */
export class NeedsReauthError extends ConflictError {}
/** 422 api_key_rejected / api_access_denied: Insightly refused the key; nothing was stored. */
export class ApiKeyRejectedError extends BrokerError {}
/** 429 provider_quota_exhausted: Insightly's daily limit is used up; see retryAfter. */
export class QuotaExhaustedError extends BrokerError {}
/** 429 quota_reserved: a background call refused to keep the rest of the quota for interactive calls. */
export class QuotaReservedError extends QuotaExhaustedError {}
/** 5xx: the broker or the deployment failed. */
export class ServerError extends BrokerError {}
/** 503 client_rejected: the provider refused the broker's OAuth client (a deployment fault). */
export class ClientRejectedError extends ServerError {}
/** A passing fault (502/503/504, or API Gateway throttling): try again later. */
export class UnavailableError extends ServerError {}

const BY_CODE = {
  needs_reauth: NeedsReauthError,
  connection_not_found: NotFoundError,
  api_key_rejected: ApiKeyRejectedError,
  api_access_denied: ApiKeyRejectedError,
  provider_quota_exhausted: QuotaExhaustedError,
  quota_reserved: QuotaReservedError,
  client_rejected: ClientRejectedError,
};
const BY_STATUS = {
  400: BadRequestError, 413: BadRequestError, 403: AccessDeniedError, 404: NotFoundError, 409: ConflictError,
  422: ApiKeyRejectedError, 429: UnavailableError, 502: UnavailableError, 503: UnavailableError, 504: UnavailableError,
};

/** Seconds from a Retry-After header (a number or an HTTP date); null if absent or unreadable. */
export function retryAfter(value, now = Date.now()) {
  if (!value) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, (when - now) / 1000);
}

/**
 * The error for a refused answer; `code` overrides the body's (the proxy's X-Broker-Error).
 * @param {Response} response
 * @param {string} text the body, already read
 * @param {string | null} [code]
 */
export function errorFor(response, text, code = null) {
  let message = "";
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === "object") {
      if (!code && typeof parsed.error === "string") code = parsed.error;
      if (typeof parsed.message === "string") message = parsed.message;
    }
  } catch {
    // not JSON: the status says it all
  }
  const status = response.status;
  const Kind = (code && Object.hasOwn(BY_CODE, code) && BY_CODE[code]) || BY_STATUS[status] ||
    (status >= 500 ? ServerError : BrokerError);
  return new Kind(status, code ?? null, message || `HTTP ${status}`, {
    retryAfter: retryAfter(response.headers.get("retry-after")), response,
  });
}
