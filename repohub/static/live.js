// repohub's only script: follows a running job's log and refreshes the CI
// and cluster panels. Every page works without it. Text from the server is
// inserted as text (log) or as our own server-escaped HTML (panels).
(function () {
  "use strict";
  // A fragment that marks itself final (data-final) stops its refresh.
  function refresh(el, url, timer) {
    fetch(url, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        el.innerHTML = html;
        if (timer && el.querySelector("[data-final]")) { clearInterval(timer.id); }
      })
      .catch(function () {});
  }
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    var url = el.getAttribute("data-refresh");
    var timer = {};
    timer.id = setInterval(function () { refresh(el, url, timer); }, 3000);
  });
  // The job page's state is re-read the moment its followed log ends
  // (ci_service ends the stream once the job is final).
  function jobEnded() {
    var s = document.querySelector("[data-job-summary]");
    if (s) { refresh(s, s.getAttribute("data-job-summary"), null); }
  }
  var log = document.querySelector("[data-follow]");
  if (log && window.fetch && window.TextDecoder) {
    fetch(log.getAttribute("data-follow"), { credentials: "same-origin" }).then(function (r) {
      if (!r.ok || !r.body) { return; }
      var reader = r.body.getReader();
      var dec = new TextDecoder();
      var first = true;
      log.setAttribute("data-state", "following");
      function pump() {
        return reader.read().then(function (res) {
          if (res.done) { log.setAttribute("data-state", "done"); jobEnded(); return; }
          if (first) { log.textContent = ""; first = false; }
          log.textContent += dec.decode(res.value, { stream: true });
          log.scrollTop = log.scrollHeight;
          return pump();
        });
      }
      return pump();
    }).catch(function () {});
  }
})();
