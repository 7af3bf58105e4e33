// The clone URL's Copy button: copies the text of the input it names. The
// URL stays selectable without JavaScript; the button only saves a step.
(function () {
  "use strict";
  document.querySelectorAll("[data-copy]").forEach(function (btn) {
    var input = document.getElementById(btn.getAttribute("data-copy"));
    if (!input) { return; }
    btn.addEventListener("click", function () {
      function done() {
        btn.textContent = "Copied";
        btn.setAttribute("data-copied", "1");
        setTimeout(function () { btn.textContent = "Copy"; }, 2000);
      }
      function fallback() {
        input.focus();
        input.select();
        try { if (document.execCommand("copy")) { done(); } } catch (e) { /* nothing to copy with */ }
      }
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, fallback);
      } else {
        fallback();
      }
    });
  });
})();
