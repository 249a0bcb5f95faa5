// Keyboard shortcuts for the audit desk: a = agree, f = flip, g = flag, n = next; on a blind item a = "A is better",
// b = "B is better". Ignored while typing a note.
(function () {
  "use strict";
  var blind = document.querySelector("#item[data-blind=yes]") !== null;
  var keys = blind ? { a: "pick-a", b: "pick-b", g: "flag" } : { a: "agree", f: "flip", g: "flag" };
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")) return;
    var key = event.key.toLowerCase();
    if (keys[key]) {
      var button = document.getElementById(keys[key]);
      if (button) { event.preventDefault(); button.click(); }
    } else if (key === "n") {
      var next = document.getElementById("next");
      if (next) { event.preventDefault(); window.location.href = next.getAttribute("href"); }
    }
  });
})();
