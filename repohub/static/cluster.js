// The cluster pages' script: redraws a live cluster page from the server
// every few seconds, and follows a VM's serial console (polling its tail,
// shown as text). Every page works without it.
(function () {
  "use strict";
  if (!window.fetch) { return; }

  // A live page: its [data-live] part is replaced by the same part of the
  // page fetched again (our own server-escaped HTML).
  var live = document.querySelector("[data-live]");
  if (live && window.DOMParser) {
    var refresh = function () {
      fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.querySelector("[data-live]");
          if (fresh) { live.innerHTML = fresh.innerHTML; live.setAttribute("data-refreshed", "1"); }
        })
        .catch(function () {})
        .then(function () { setTimeout(refresh, 3000); });
    };
    setTimeout(refresh, 3000);
  }

  var pre = document.querySelector("[data-console]");
  if (pre) {
    var url = pre.getAttribute("data-console");
    var poll = function () {
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (text !== null) {
            var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.textContent = text;
            pre.setAttribute("data-state", "following");
            if (atEnd) { pre.scrollTop = pre.scrollHeight; }
          }
        })
        .catch(function () {})
        .then(function () { setTimeout(poll, 2000); });
    };
    setTimeout(poll, 2000);
  }
})();
