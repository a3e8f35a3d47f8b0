// The console's only script: copy buttons and in-page confirmations. Every page works
// without it (a Revoke then asks for its confirmation on the next page).
"use strict";
document.addEventListener("click", function (ev) {
  var b = ev.target.closest("button");
  if (!b) return;
  if (b.dataset.copy) {
    var el = document.getElementById(b.dataset.copy);
    if (!el) return;
    var text = el.textContent;
    var done = function () { b.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { select(el); });
    } else {
      select(el);
      try { document.execCommand("copy"); done(); } catch (e) { /* selected for the user */ }
    }
    return;
  }
  if (b.classList.contains("reveal")) {
    var c = b.form && b.form.querySelector(".confirm");
    if (c) {
      ev.preventDefault();
      c.hidden = false;
      b.hidden = true;
      var confirm = c.querySelector("button");
      if (confirm) confirm.focus();
    }
  }
});
function select(el) {
  var r = document.createRange();
  r.selectNodeContents(el);
  var s = window.getSelection();
  s.removeAllRanges();
  s.addRange(r);
}
