// API keys page: create (the secret is shown once, in this page's memory only: never stored,
// gone on reload), revoke with an accessible two-step confirm, copy the quick-start snippets.
"use strict";

(() => {
  const form = document.getElementById("create-key-form");
  const createError = document.getElementById("create-error");
  const status = document.getElementById("keys-status");
  const body = document.getElementById("keys-body");
  const empty = document.getElementById("keys-empty");
  const panel = document.getElementById("new-key");
  const value = document.getElementById("new-key-value");
  let secret = "";

  function when(stamp) {
    // RFC 3339 from the API, written as the server writes it: "2025-01-31 12:34 UTC".
    return stamp ? `${stamp.slice(0, 10)} ${stamp.slice(11, 16)} UTC` : "never";
  }

  function revokeCell(key) {
    const descId = `key-desc-${key.id}`;
    return darkbloom.el("td", { class: "actions" },
      darkbloom.el("span", { class: "sr-only", id: descId,
                             text: `key ${key.label || "without a label"}, ${key.prefix}…` }),
      darkbloom.el("button", { type: "button", class: "danger", "data-action": "revoke",
                               "aria-describedby": descId, text: "Revoke" }));
  }

  function addRow(key) {
    const label = key.label ? darkbloom.el("td", { text: key.label })
      : darkbloom.el("td", {}, darkbloom.el("span", { class: "muted", text: "no label" }));
    const row = darkbloom.el("tr", { "data-key-id": key.id, "data-prefix": key.prefix },
      label,
      darkbloom.el("td", {}, darkbloom.el("code", { text: `${key.prefix}…` })),
      darkbloom.el("td", { text: when(key.created_at) }),
      darkbloom.el("td", { text: "never" }),
      revokeCell(key));
    body.append(row);
    empty.classList.add("hidden");
  }

  function hideSecret() {
    secret = "";
    value.textContent = "";
    panel.classList.add("hidden");
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    darkbloom.say(createError, "");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const key = await darkbloom.api("POST", "/v1/auth/keys", { label: form.elements.label.value.trim() });
      secret = key.api_key;
      value.textContent = secret;
      panel.classList.remove("hidden");
      document.getElementById("new-key-title").focus();
      addRow(key);
      form.reset();
    } catch (exc) {
      darkbloom.say(createError, exc.message, "error");
    } finally {
      button.disabled = false;
    }
  });

  document.getElementById("new-key-copy").addEventListener(
    "click", (event) => darkbloom.copy(secret, event.currentTarget));
  document.getElementById("new-key-hide").addEventListener("click", () => {
    hideSecret();
    form.elements.label.focus();
  });

  // Revoke: the first button asks, a "Confirm revoke" button does it, "Cancel" steps back.
  function confirmStep(cell, revoke) {
    revoke.classList.add("hidden");
    const confirm = darkbloom.el("button", { type: "button", class: "danger", "data-action": "confirm",
      "aria-describedby": revoke.getAttribute("aria-describedby"), text: "Confirm revoke" });
    const cancel = darkbloom.el("button", { type: "button", class: "secondary", "data-action": "cancel",
      text: "Cancel" });
    cell.append(confirm, cancel);
    confirm.focus();
  }

  function stepBack(cell) {
    cell.querySelectorAll("[data-action=confirm], [data-action=cancel]").forEach((b) => b.remove());
    const revoke = cell.querySelector("[data-action=revoke]");
    revoke.classList.remove("hidden");
    revoke.focus();
  }

  async function revoke(row, cell, button) {
    button.disabled = true;
    const prefix = row.dataset.prefix;
    try {
      await darkbloom.api("DELETE", "/v1/auth/keys", { id: row.dataset.keyId });
      row.remove();
      if (!body.querySelector("tr")) empty.classList.remove("hidden");
      darkbloom.say(status, `Key ${prefix}… revoked: it no longer works.`, "ok");
      document.getElementById("list-title").focus();
    } catch (exc) {
      darkbloom.say(status, `Could not revoke ${prefix}…: ${exc.message}`, "error");
      button.disabled = false;
    }
  }

  body.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const row = button.closest("tr");
    const cell = button.closest("td");
    darkbloom.say(status, "");
    if (button.dataset.action === "revoke") confirmStep(cell, button);
    else if (button.dataset.action === "cancel") stepBack(cell);
    else if (button.dataset.action === "confirm") revoke(row, cell, button);
  });

  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      darkbloom.copy(source ? source.textContent : "", button);
    });
  });
})();
