"""The demo app's page: HTML for people, built from what the app learnt from the broker.
Every value from outside (names, codes, messages) is escaped."""

from __future__ import annotations

import html

from insightly_connect import Connection

AUTH_MODES = {"oauth2": "OAuth", "api_key": "API key"}
# Both buttons open the flow in a popup when JavaScript runs; without it the forms redirect.
POPUP_SCRIPT = """document.querySelectorAll("form[data-popup]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    InsightlyConnect.connect(function () {
      return fetch(form.dataset.popup, {method: "POST"}).then(function (answer) {
        if (!answer.ok) throw new Error("the connect session was refused");
        return answer.json();
      }).then(function (session) { return session.connect_url; });
    }).then(function (result) {
      if (result.status === "blocked") return form.submit();
      if (result.status !== "pending") return location.assign("/?" + new URLSearchParams(result));
      // Completed by this app's backend, as after a redirect; the code stays out of the URL.
      return fetch("/complete", {method: "POST", body: new URLSearchParams(result)})
        .then(function (answer) { location.assign(answer.url); });
    }, function () { location.assign("/?status=error&error=connect_session_refused"); });
  });
});"""
# The webhook list refreshes itself: no reload needed to see the next event arrive.
WEBHOOKS_SCRIPT = """(function () {
  var list = document.getElementById("webhooks-list");
  function cell(row, text) { row.insertCell().textContent = text; }
  function refresh() {
    fetch("/webhooks.json").then(function (answer) { return answer.json(); }).then(function (hooks) {
      list.replaceChildren();
      hooks.forEach(function (hook) {
        var row = list.insertRow();
        row.className = "webhook";
        cell(row, hook.type); cell(row, hook.connection_id || ""); cell(row, hook.verified ? "yes" : "no");
        cell(row, hook.received_at);
      });
    }, function () {});
  }
  setInterval(refresh, 2000);
})();"""

STYLE = """body{font-family:system-ui,sans-serif;background:#f4f6f8;color:#1f2933;margin:0}
main{max-width:32rem;margin:4rem auto;background:#fff;border-radius:8px;padding:2rem;
box-shadow:0 1px 4px rgba(0,0,0,.1)}h1{margin-top:0;font-size:1.4rem}.buttons{display:flex;flex-wrap:wrap;gap:.75rem}
@media (max-width:36rem){main{margin:0;border-radius:0;padding:1.25rem}}
button{font-size:1rem;padding:.6rem 1.1rem;border-radius:6px;border:1px solid #c5ccd3;background:#fff;cursor:pointer}
#connect{background:#2563eb;border-color:#2563eb;color:#fff}.message:empty{display:none}
.message{background:#eef4ff;border-radius:6px;padding:.6rem .9rem;margin-bottom:1rem}
.result{background:#ecfdf3;border-radius:6px;padding:.6rem .9rem}
#webhooks h2{font-size:1.1rem;margin-top:1.5rem}#webhooks table{width:100%;border-collapse:collapse;font-size:.9rem}
code{font-size:.85rem;word-break:break-all}
#webhooks th,#webhooks td{text-align:left;padding:.25rem .4rem;border-bottom:1px solid #e4e7eb}"""


def page(message: str, status: str, connection: Connection | None, *, call_result: str = "",
         contacts: tuple[list, str | None] | None = None, test_key: tuple[str, str] | None = None,
         offer_test_key: bool = False, webhooks: list[dict] | None = None) -> str:
    """The app's one page: `status` is the line for people about the connection, `webhooks`
    the ones received (None: webhooks are off, no section)."""
    e = html.escape
    result = f'<p id="call-result" class="result">{e(call_result)}</p>' if call_result else ""
    if contacts is not None:
        result += contacts_list(*contacts)
    if test_key is not None:
        result += test_key_box(*test_key)
    test_key_button = ('<form method="post" action="/test-key"><button id="issue-test-key" type="submit">'
                       'Issue a test key</button></form>' if offer_test_key else "")
    # The data: icon spares the browser a /favicon.ico request, whose 404 it would log as an error.
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Demo SaaS</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,">
<style>{STYLE}</style></head><body><main>
<h1>Demo SaaS</h1>
<div id="message" class="message" role="status">{e(message)}</div>
<p>Insightly: <strong id="status">{e(status)}</strong></p>
{connection_details(connection)}
{result}
<div class="buttons">
<form method="post" action="/connect" data-popup="/connect-popup">
<button id="connect" type="submit">Connect Insightly</button></form>
<form method="post" action="/connect-api-key" data-popup="/connect-api-key-popup">
<button id="connect-api-key" type="submit">Connect with an API key</button></form>
{test_key_button}
<form method="post" action="/call"><button id="call" type="submit">Call Insightly</button></form>
<form method="post" action="/contacts"><button id="contacts-button" type="submit">Contacts</button></form>
<form method="post" action="/sync"><button id="sync" type="submit">Background sync</button></form>
<form method="post" action="/disconnect"><button id="disconnect" type="submit">Disconnect</button></form>
</div>
{webhooks_section(webhooks) if webhooks is not None else ""}</main><script src="/connect.js"></script>
<script id="popup-connect">{POPUP_SCRIPT}</script>
{f'<script id="webhooks-refresh">{WEBHOOKS_SCRIPT}</script>' if webhooks is not None else ""}</body></html>"""


def connection_details(connection: Connection | None) -> str:
    """How it is connected and, for a key, how much of the account's daily quota is left
    (each call, the broker's checks included, spends one)."""
    if connection is None:
        return ""
    e = html.escape
    mode = AUTH_MODES.get(connection.auth_mode, str(connection.auth_mode))
    if connection.pod:
        mode += f" (pod {connection.pod})"
    details = f'<p>Connected with: <span id="auth-mode">{e(mode)}</span></p>'
    # "quota" (the quota group's, with its reserve) from brokers with quota groups, else the key's own.
    rate = connection.raw.get("quota") or connection.rate_limit or {}
    if isinstance(rate.get("limit"), int) and isinstance(rate.get("remaining"), int):
        quota = f"{rate['remaining']:,} of {rate['limit']:,} requests left today"
        quota += " (used up)" if rate["remaining"] == 0 else " (reserve reached)" if rate.get(
            "reserve_reached") else ""
        details += (f'<p>Insightly API quota: <span id="quota">{e(quota)}</span><br>'
                    f'<progress id="quota-bar" max="{rate["limit"]}" value="{rate["remaining"]}"></progress></p>')
    return details


def contacts_list(contacts: list, total: str | None) -> str:
    e = html.escape
    items = []
    for contact in contacts:
        contact = contact if isinstance(contact, dict) else {}
        name = " ".join(str(contact[k]) for k in ("FIRST_NAME", "LAST_NAME") if contact.get(k)) or "(no name)"
        email = f" ({contact['EMAIL_ADDRESS']})" if contact.get("EMAIL_ADDRESS") else ""
        items.append(f"<li>{e(name + email)}</li>")
    count = f"{len(contacts)} of {total} contacts" if total else f"{len(contacts)} contacts"
    return (f'<section id="contacts"><p>Contacts: <span id="contacts-count">{e(count)}</span></p>'
            f'<ul id="contacts-list">{"".join(items)}</ul></section>')


def webhooks_section(webhooks: list[dict]) -> str:
    e = html.escape
    rows = "".join(f'<tr class="webhook"><td>{e(h["type"])}</td><td>{e(h["connection_id"])}</td>'
                   f'<td>{"yes" if h["verified"] else "no"}</td><td>{e(h["received_at"])}</td></tr>'
                   for h in webhooks)
    return (f'<section id="webhooks"><h2>Webhooks received</h2><table><thead><tr><th>Type</th>'
            f'<th>Connection</th><th>Verified</th><th>Time</th></tr></thead>'
            f'<tbody id="webhooks-list">{rows}</tbody></table></section>')


def test_key_box(api_key: str, api_url: str) -> str:
    e = html.escape
    return (f'<section id="test-key" class="result"><p>A test account at the Insightly stand-in. Paste these '
            f'into the key page after "Connect with an API key":</p><p>API key: <code id="test-key-value">'
            f'{e(api_key)}</code></p><p>API URL: <code id="test-api-url">{e(api_url)}</code></p></section>')
