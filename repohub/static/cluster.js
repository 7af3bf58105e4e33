// The VM page's console follower: polls the console tail (plain text) and
// shows it as text. The page works without it (the tail as it was drawn).
(function () {
  "use strict";
  var pre = document.querySelector("[data-console]");
  if (!pre || !window.fetch) { return; }
  var url = pre.getAttribute("data-console");
  function poll() {
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
  }
  setTimeout(poll, 2000);
})();
