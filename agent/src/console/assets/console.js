// Portcullis console. Part of Portcullis, Apache-2.0. No inline script anywhere: the page's
// behaviour is declared with data- attributes and wired here.
//   data-confirm="question"   on a form: asks before submitting.
//   data-refresh="/url"       on an element: its content is replaced by GET /url every 2 s.
"use strict";
document.addEventListener("submit", function (ev) {
  var q = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
  if (q && !window.confirm(q)) { ev.preventDefault(); }
});
function refresh(el) {
  var url = el.getAttribute("data-refresh");
  fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
    .then(function (r) {
      if (r.status === 401) { window.location.assign("/login"); return null; }
      return r.ok ? r.text() : null;
    })
    .then(function (html) { if (html !== null) { el.innerHTML = html; } })
    .catch(function () {});
}
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    window.setInterval(function () { refresh(el); }, 2000);
  });
});
