// The admin page's user table: search, filters and sorting, all in the browser
// over the table the server rendered (which is complete without this script).
"use strict";
(function () {
  const table = document.getElementById("users");
  const tools = document.getElementById("user-tools");
  if (!table || !tools) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const search = document.getElementById("user-search");
  const state = document.getElementById("user-state");
  const admins = document.getElementById("user-admins");
  const disabled = document.getElementById("user-disabled");
  const count = document.getElementById("user-count");
  tools.hidden = false;

  function filter() {
    const q = search.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const ok = (!q || row.cells[0].textContent.toLowerCase().includes(q)) &&
        (!state.value || row.dataset.state === state.value) &&
        (!admins.checked || row.dataset.admin === "true") &&
        (!disabled.checked || row.dataset.disabled === "true");
      row.hidden = !ok;
      if (ok) shown += 1;
    }
    count.textContent = shown + " of " + rows.length + " shown";
  }
  [search, state, admins, disabled].forEach((el) => {
    el.addEventListener("input", filter);
    el.addEventListener("change", filter);
  });

  // Sorting: each sortable header becomes a button; a second press reverses.
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, column) => {
    const kind = th.dataset.sort;
    if (!kind) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sort";
    button.textContent = th.textContent;
    th.textContent = "";
    th.appendChild(button);
    button.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const value = (row) => row.cells[column].dataset.value || "";
      rows.sort((a, b) => {
        const [x, y] = [value(a), value(b)];
        const order = kind === "number" ? Number(x) - Number(y) : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
  filter();

  // Every few seconds, the environments' state and use from the admin API (the
  // admin's own session is enough to read it).
  async function refresh() {
    try {
      const resp = await fetch("/_spawngate/api/overview", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (resp.ok) {
        for (const u of (await resp.json()).users) {
          const row = rows.find((r) => r.dataset.user === u.user);
          if (!row) continue;
          row.dataset.state = u.text.state;
          const cell = (name) => row.querySelector('[data-field="' + name + '"]');
          const badge = cell("state").querySelector(".state");
          badge.textContent = u.text.label;
          badge.className = "state state-" + u.text.state;
          cell("state").dataset.value = u.text.state;
          for (const name of ["activity", "cpu", "memory"]) {
            cell(name).textContent = u.text[name];
            cell(name).dataset.value = u.sort[name];
          }
        }
        filter();
        table.dataset.refreshed = String(Number(table.dataset.refreshed || 0) + 1);
      }
    } catch (e) {
      // The next round tries again.
    }
    setTimeout(refresh, 5000);
  }
  setTimeout(refresh, 5000);
})();
