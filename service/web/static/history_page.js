// A confirmed bulk action answers when its last batch is done (about 8 s for 10,000 jobs:
// it is spread out so the API stays quick): its button says so and cannot be pressed twice.
(function () {
  "use strict";
  var forms = document.querySelectorAll("form.confirm");
  Array.prototype.forEach.call(forms, function (form) {
    var button = form.querySelector("button[type=submit]");
    if (!button) {
      return;
    }
    var label = button.textContent;
    form.addEventListener("submit", function () {
      button.disabled = true;
      button.textContent = "Working\u2026";
    });
    // Back to this page from the result (the browser's back-forward cache keeps it as it
    // was left): the button works again.
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) {
        button.disabled = false;
        button.textContent = label;
      }
    });
  });
})();

// Live status for the history page: while a page shows jobs that are still running, ask the
// service for fresh copies of the changing parts about once a second and swap them in.
//
// The service renders (and escapes) every fragment; this script only places them, so it
// never turns user text into markup. It stops when every job shown is terminal, pauses
// while the tab is hidden, and backs off when the service does not answer.
(function () {
  "use strict";

  var body = document.body;
  var url = body.getAttribute("data-live-url");
  if (!url || !window.fetch) {
    return;
  }
  var INTERVAL_MS = 1000;
  var MAX_BACKOFF_MS = 30000;
  var failures = 0;

  function setState(state) {
    body.setAttribute("data-live-state", state);
  }

  // What each section last received: a section is replaced only when the service's
  // rendering of it changed, so images already on screen are not loaded again.
  var last = {};

  function apply(data) {
    var sections = data.sections || {};
    Object.keys(sections).forEach(function (name) {
      var target = document.querySelector('[data-section="' + name.replace(/["\\]/g, "") + '"]');
      if (target && last[name] !== sections[name]) {
        last[name] = sections[name];
        target.innerHTML = sections[name];
      }
    });
  }

  function schedule(delay) {
    window.setTimeout(tick, delay);
  }

  function tick() {
    if (document.hidden) {
      schedule(INTERVAL_MS);
      return;
    }
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          setState("signed-out");
          throw new Error("signed out");
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        failures = 0;
        apply(data);
        if (data.next_url) {
          url = data.next_url;  // only what is still running
        }
        if (data.done) {
          setState("done");
        } else {
          setState("live");
          schedule(INTERVAL_MS);
        }
      })
      .catch(function () {
        if (body.getAttribute("data-live-state") === "signed-out") {
          return;
        }
        failures += 1;
        setState("retrying");
        schedule(Math.min(MAX_BACKOFF_MS, INTERVAL_MS * Math.pow(2, failures)));
      });
  }

  setState("live");
  schedule(INTERVAL_MS);
})();
