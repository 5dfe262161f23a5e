// Compiled (not run) by `npm test`: the README's usage must type-check against src/index.d.ts.
import { Broker, NeedsReauthError, NotFoundError, QuotaExhaustedError, webhooks } from "insightly-connect-client";
import type { Connection, Token } from "insightly-connect-client";

export async function usage(): Promise<void> {
  const broker = new Broker("https://abc123.execute-api.eu-west-1.amazonaws.com", { timeoutMs: 10_000 });
  const session = await broker.createConnectSession("user-42", "https://app.example.com/", {
    authMode: "oauth2", tags: { customer: "acme" }, quotaGroup: "acme",
  });
  const sessionId: string = session.sessionId;
  const linked: Connection = await broker.completeConnectSession(sessionId, "code");
  const when: Date | null = linked.connectedAt;
  const token: Token = await broker.token("user-42");
  const header: string = token.authorization;
  for await (const connection of broker.connections({ tag: { customer: "acme" } })) {
    console.log(connection.connectionId, connection.status, when, header.length);
  }
  await broker.update("user-42", { metadata: { seats: 3 } });
  await broker.putApiKey("user-43", "key", { pod: "na1" });
  try {
    const answer: Response = await broker.proxy("user-42", { priority: "background" }).get("Contacts", { query: { top: 5 } });
    console.log(await answer.json());
  } catch (error) {
    if (error instanceof NeedsReauthError || error instanceof NotFoundError) console.log(error.code, error.status);
    if (error instanceof QuotaExhaustedError) console.log(error.retryAfter);
  }
  const event = webhooks.verify("whsec_x", new Headers(), "{}");
  console.log(event.type, event.connection_id);
  await broker.refresh("user-42");
  await broker.status("user-42");
  await broker.delete("user-42");
}
