// The dashboard's environment panel, kept current: every few seconds it reads
// /_spawngate/api/me/dashboard (the same words the server renders) and updates
// the facts, the buttons and the output. Without it the page works as is.
"use strict";
(function () {
  const panel = document.getElementById("environment");
  if (!panel || !window.fetch) return;
  const url = panel.dataset.refresh;
  const every = 4000;
  const field = (name) => panel.querySelectorAll('[data-field="' + name + '"]');
  const logs = document.querySelector('pre[data-field="logs"]');

  function show(text) {
    for (const name of ["label", "since", "cpu", "memory", "activity", "cull"]) {
      field(name).forEach((el) => { el.textContent = text[name]; });
    }
    field("label").forEach((el) => { el.className = "state state-" + text.state; });
    field("failure").forEach((el) => {
      el.textContent = text.failure;
      el.hidden = text.failure === "";
    });
    panel.querySelectorAll("button[data-states]").forEach((b) => {
      b.disabled = !b.dataset.states.split(" ").includes(text.state);
    });
    if (logs && logs.textContent !== text.logs) {
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.textContent = text.logs;
      if (atEnd) logs.scrollTop = logs.scrollHeight;
    }
    panel.dataset.state = text.state;
  }

  async function refresh() {
    try {
      const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (resp.status === 401) { location.assign("/_spawngate/login"); return; }
      if (resp.ok) show((await resp.json()).text);
    } catch (e) {
      // Offline for a moment: the next round tries again.
    }
    // Faster while something is changing.
    const busy = panel.dataset.state === "starting";
    setTimeout(refresh, busy ? 1000 : every);
  }
  if (logs) logs.scrollTop = logs.scrollHeight;
  setTimeout(refresh, every);
})();
