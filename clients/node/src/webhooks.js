// Verify the broker's webhooks (Standard Webhooks) with the off-the-shelf standardwebhooks package.
//
//   import { webhooks } from "insightly-connect-client";
//   const event = webhooks.verify("whsec_...", request.headers, rawBody);   // throws if forged or stale
//
// `body` must be the raw body as received (a string or bytes): a re-serialised JSON body no
// longer matches the signature. The timestamp must be within 5 minutes; drop duplicates by
// event.id (the same on a retry).
import { Webhook, WebhookVerificationError } from "standardwebhooks";

export { WebhookVerificationError };

/**
 * The event ({id, type, connection_id, status, reason, at, tags, ...}) if the signature and
 * timestamp hold; throws WebhookVerificationError otherwise.
 * @param {string} secret whsec_<base64 key>, the stack's WebhookSecret
 * @param {Headers | Record<string, string | string[] | undefined>} headers
 * @param {string | Uint8Array} body
 */
export function verify(secret, headers, body) {
  const plain = {};
  const entries = typeof headers?.entries === "function" && !Array.isArray(headers)
    ? headers.entries() : Object.entries(headers ?? {});
  for (const [name, value] of entries) {
    if (value !== undefined) plain[name.toLowerCase()] = Array.isArray(value) ? value.join(", ") : String(value);
  }
  const payload = typeof body === "string" ? body : new TextDecoder().decode(body);
  const event = new Webhook(secret).verify(payload, plain);
  if (!event || typeof event !== "object" || Array.isArray(event)) {
    throw new WebhookVerificationError("the payload is not a JSON object");
  }
  return event;
}
