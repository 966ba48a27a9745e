// Network page: every few seconds, fetch the live section rendered by the server
// (GET /network/live, our own escaped HTML) and swap it in; only the "Updated at" line is
// announced to screen readers, not the tables.
"use strict";

(() => {
  const live = document.getElementById("network-live");
  const updated = document.getElementById("network-updated");
  if (!live) return;
  const every = Math.max(Number(live.dataset.refreshS) || 10, 2) * 1000;
  let timer = null;
  let busy = false;

  function clock(date) {
    return [date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds()]
      .map((n) => String(n).padStart(2, "0")).join(":");
  }

  async function refresh() {
    timer = null;
    if (busy || document.hidden) return schedule();
    busy = true;
    const abort = new AbortController();
    const giveUp = setTimeout(() => abort.abort(), every);
    try {
      const response = await darkbloom.api("GET", "/network/live", undefined,
        { raw: true, signal: abort.signal, headers: { Accept: "text/html" } });
      const html = await response.text();
      const fresh = new DOMParser().parseFromString(html, "text/html");
      live.replaceChildren(...fresh.body.childNodes);
      darkbloom.say(updated, `Updated at ${clock(new Date())} UTC`);
    } catch (_) {
      darkbloom.say(updated, `Could not update at ${clock(new Date())} UTC; trying again`, "error");
    } finally {
      clearTimeout(giveUp);
      busy = false;
      schedule();
    }
  }

  function schedule() {
    if (timer === null) timer = setTimeout(refresh, every);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer !== null) {
      clearTimeout(timer);
      timer = null;
      refresh();
    }
  });
  schedule();
})();
