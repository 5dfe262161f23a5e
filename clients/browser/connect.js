/*
 * connect.js: the popup helper for Insightly Connect. No dependencies; copy it into
 * your app and serve it from your own origin.
 *
 *   button.addEventListener("click", function () {
 *     InsightlyConnect.connect(function () {            // called after the popup is open
 *       return fetch("/my-backend/connect-session", {method: "POST"})   // your backend: POST
 *         .then(function (r) { return r.json(); })                      // /connect-sessions with
 *         .then(function (s) { return s.connect_url; });                // "display": "popup"
 *     }).then(function (result) { ... });
 *   });
 *
 * Resolves with the message the broker's last page posted:
 *   {status: "pending", session_id, completion_code}  -> your backend completes it (session binding)
 *   {status: "connected", connection_id} | {status: "error", error}
 * or {status: "unknown"} when the popup closed without a message (the person closed it, or a
 * Cross-Origin-Opener-Policy cut the link): ask your backend for GET /connections/{id}.
 * {status: "blocked"} when the browser refused the popup: fall back to a redirect.
 * Only a message from the popup, from the broker's origin (connect_url's), of type
 * "insightly-connect" counts. popup.closed is polled only to notice that no message came.
 */
(function (root) {
  "use strict";
  var TYPE = "insightly-connect";
  var FIELDS = ["status", "connection_id", "error", "session_id", "completion_code"];
  var CLOSED_GRACE_MS = 500; // a message posted just before window.close() may still be queued

  function connect(connectUrl, options) {
    options = options || {};
    // Opened now, in the click handler: a popup opened after an await is blocked.
    var popup = root.open("", options.name || "insightly-connect",
                          options.features || "popup,width=520,height=720");
    if (!popup) return Promise.resolve({status: "blocked"});
    var url = typeof connectUrl === "function" ? Promise.resolve().then(connectUrl) : Promise.resolve(connectUrl);
    return url.then(function (href) {
      var brokerOrigin = new URL(href, root.location.href).origin;
      return new Promise(function (resolve) {
        var done = false;
        var timer = null;
        function finish(result) {
          if (done) return;
          done = true;
          clearInterval(timer);
          root.removeEventListener("message", onMessage);
          resolve(result);
        }
        function onMessage(event) {
          if (event.origin !== brokerOrigin || event.source !== popup) return;
          var data = event.data;
          if (!data || data.type !== TYPE || typeof data.status !== "string") return;
          var result = {};
          FIELDS.forEach(function (name) {
            if (typeof data[name] === "string") result[name] = data[name];
          });
          finish(result);
        }
        root.addEventListener("message", onMessage);
        popup.location.href = href;
        timer = setInterval(function () {
          if (!popup.closed) return;
          clearInterval(timer);
          setTimeout(function () { finish({status: "unknown"}); }, CLOSED_GRACE_MS);
        }, 250);
      });
    }, function (error) {
      popup.close();
      throw error;
    });
  }

  root.InsightlyConnect = {connect: connect};
})(window);
