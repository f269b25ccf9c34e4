// Live counters: one EventSource on the console's shared poll. No inline script anywhere
// (the Content-Security-Policy forbids it); this file is all the script there is.
(function () {
  // The cancel form posts to /tasks/{the chosen type}/cancel.
  var cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("submit", function () {
      var task = document.getElementById("cancel-task").value;
      cancel.action = cancel.getAttribute("data-action-base") + encodeURIComponent(task) + "/cancel";
    });
  }
  var table = document.getElementById("overview");
  if (!table || !window.EventSource) return;
  var base = document.body.getAttribute("data-base") || "";
  var source = new EventSource(base + "/events");
  source.addEventListener("figures", function (ev) {
    var data = JSON.parse(ev.data);
    data.rows.forEach(function (row) {
      var tr = table.querySelector('tr[data-task="' + CSS.escape(row.task) + '"]');
      if (!tr) return;
      Object.keys(row).forEach(function (k) {
        var td = tr.querySelector('[data-field="' + k + '"]');
        if (!td) return;
        var target = td.querySelector("a") || td;
        if (target.textContent !== String(row[k])) target.textContent = row[k];
      });
    });
    document.body.setAttribute("data-polls", data.polls);
  });
})();
