// Portcullis console: progressive enhancement only. Every page works
// without this script; with it, decisions stream in live, queues refresh
// themselves, and destructive forms ask for confirmation. Served from
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
})();
