// Portcullis console: progressive enhancement only. Every page works
// without this script; with it, decisions stream in live, queues refresh
// themselves, destructive forms ask for confirmation, and passkeys run
// their WebAuthn ceremonies (which need a script). Served from
// /console/assets (the CSP allows no inline script); it never builds
// markup from data: text goes in with textContent.
"use strict";

(function () {
  // Live decisions (overview): the server-sent stream of audit records.
  var status = document.getElementById("live-status");
  var live = document.getElementById("live");
  if (status && live && window.EventSource) {
    var body = live.tBodies[0];
    var source = new EventSource(status.getAttribute("data-events"));
    source.addEventListener("open", function () {
      status.textContent = "Live: new decisions appear as they are recorded.";
      status.setAttribute("data-live", "on");
    });
    source.addEventListener("error", function () {
      status.textContent = "Live stream interrupted; reconnecting…";
      status.setAttribute("data-live", "off");
    });
    source.addEventListener("decision", function (event) {
      var fields;
      try {
        fields = JSON.parse(event.data).fields;
      } catch (e) {
        return;
      }
      var row = document.createElement("tr");
      fields.forEach(function (value, i) {
        var cell = document.createElement("td");
        if (i === 5) {
          var span = document.createElement("span");
          span.className = "outcome " + (value === "allow" || value === "deny" ? value : "");
          span.textContent = value;
          cell.appendChild(span);
        } else {
          cell.textContent = value;
        }
        row.appendChild(cell);
      });
      row.className = "fresh";
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > 200) {
        body.deleteRow(body.rows.length - 1);
      }
    });
  }

  // Sections that refresh themselves (the approvals queue), unless the
  // user is typing into one of their fields.
  Array.prototype.forEach.call(document.querySelectorAll("[data-refresh]"), function (section) {
    var seconds = parseInt(section.getAttribute("data-refresh"), 10) || 5;
    setInterval(function () {
      if (section.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
        return;
      }
      fetch(window.location.pathname + window.location.search, {
        credentials: "same-origin",
        headers: { "accept": "text/html" }
      }).then(function (response) {
        if (!response.ok || response.redirected) {
          return null;
        }
        return response.text();
      }).then(function (html) {
        if (!html) {
          return;
        }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(section.id);
        if (fresh && fresh.innerHTML !== section.innerHTML) {
          section.replaceChildren.apply(section, Array.prototype.slice.call(fresh.childNodes));
        }
      }).catch(function () {});
    }, seconds * 1000);
  });

  // Destructive forms confirm first.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // Passkeys (the step-up page): the WebAuthn ceremonies. The server sends
  // the options as JSON with base64url members for the binary ones; the
  // browser's answer goes back the same way, in a form with the session's
  // CSRF token. The page then reloads to show the outcome.
  function fromB64url(text) {
    var padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    var binary = atob(padded);
    var out = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      out[i] = binary.charCodeAt(i);
    }
    return out.buffer;
  }
  function toB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) {
      binary += String.fromCharCode(bytes[i]);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function postForm(url, fields) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      body: new URLSearchParams(fields)
    }).then(function (response) {
      return response.json().catch(function () {
        return { error: { code: "http_" + response.status, message: "the console refused the request" } };
      }).then(function (answer) {
        if (!response.ok) {
          var error = answer.error || {};
          throw new Error((error.message || "refused") + " (" + (error.code || response.status) + ")");
        }
        return answer;
      });
    });
  }
  function descriptors(list) {
    return (list || []).map(function (c) {
      return { type: c.type, id: fromB64url(c.id) };
    });
  }
  var passkeyStatus = document.getElementById("passkey-status");
  // The session's CSRF token, or on the login page the login form's nonce.
  var csrfField = document.querySelector("main input[name=csrf], main input[name=login_nonce]");
  function passkeyButton(id, ceremony) {
    var button = document.getElementById(id);
    if (!button || !passkeyStatus || !csrfField) {
      return;
    }
    if (!window.PublicKeyCredential || !navigator.credentials) {
      button.disabled = true;
      passkeyStatus.textContent = "This browser cannot use passkeys (no WebAuthn).";
      return;
    }
    button.addEventListener("click", function () {
      var fields = {};
      fields[csrfField.name] = csrfField.value;
      var admin = document.getElementById("passkey-admin");
      if (admin) {
        fields.admin = admin.value;
      }
      var label = document.getElementById("passkey-label");
      button.disabled = true;
      passkeyStatus.setAttribute("data-state", "busy");
      passkeyStatus.textContent = "Waiting for your authenticator…";
      postForm(button.getAttribute("data-options"), fields)
        .then(function (options) {
          return ceremony(options.publicKey);
        })
        .then(function (credential) {
          fields.label = label ? label.value : "";
          fields.credential = JSON.stringify(credential);
          return postForm(button.getAttribute("data-finish"), fields);
        })
        .then(function (answer) {
          passkeyStatus.setAttribute("data-state", "done");
          if (answer.location) {
            window.location.assign(answer.location);
          } else {
            window.location.reload();
          }
        })
        .catch(function (error) {
          button.disabled = false;
          passkeyStatus.setAttribute("data-state", "error");
          passkeyStatus.textContent = "Refused: " + error.message;
        });
    });
  }
  passkeyButton("passkey-register", function (options) {
    var publicKey = {
      challenge: fromB64url(options.challenge),
      rp: options.rp,
      user: { id: fromB64url(options.user.id), name: options.user.name, displayName: options.user.displayName },
      pubKeyCredParams: options.pubKeyCredParams,
      timeout: options.timeout,
      attestation: options.attestation,
      authenticatorSelection: options.authenticatorSelection,
      excludeCredentials: descriptors(options.excludeCredentials)
    };
    return navigator.credentials.create({ publicKey: publicKey }).then(function (c) {
      return {
        id: c.id,
        type: c.type,
        clientDataJSON: toB64url(c.response.clientDataJSON),
        attestationObject: toB64url(c.response.attestationObject)
      };
    });
  });
  function assertion(options) {
    var publicKey = {
      challenge: fromB64url(options.challenge),
      rpId: options.rpId,
      timeout: options.timeout,
      userVerification: options.userVerification,
      allowCredentials: descriptors(options.allowCredentials)
    };
    return navigator.credentials.get({ publicKey: publicKey }).then(function (c) {
      return {
        id: c.id,
        type: c.type,
        clientDataJSON: toB64url(c.response.clientDataJSON),
        authenticatorData: toB64url(c.response.authenticatorData),
        signature: toB64url(c.response.signature)
      };
    });
  }
  passkeyButton("passkey-step-up", assertion);
  passkeyButton("passkey-login", assertion);
})();
