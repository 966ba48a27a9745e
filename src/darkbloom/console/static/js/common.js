// Shared by every page: calls to the public API with this browser's session, and sign-out.
// The session cookie is HttpOnly (no script can read it); unsafe methods carry the CSRF token
// from the darkbloom_csrf cookie as X-CSRF-Token. No key or token is ever kept in localStorage.
"use strict";

const darkbloom = (() => {
  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  // fetch() to our own API; JSON in and out. Errors (OpenAI or Anthropic JSON) become ApiError
  // with the server's message. A string body is JSON already and is sent exactly as given (the
  // chat hashes the bytes it sent to check the receipt's request hash).
  async function api(method, path, body, extra = {}) {
    const headers = { Accept: "application/json", ...(extra.headers || {}) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (!["GET", "HEAD"].includes(method)) headers["X-CSRF-Token"] = cookie("darkbloom_csrf");
    const response = await fetch(path, {
      method, headers, credentials: "same-origin", signal: extra.signal,
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    if (extra.raw) {
      if (!response.ok) throw await errorOf(response);
      return response;
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!response.ok) throw new ApiError(response.status, messageOf(data, response), data);
    return data;
  }

  function messageOf(data, response) {
    const error = data && data.error;
    if (error && typeof error.message === "string") return error.message;
    return `request failed (${response.status} ${response.statusText})`;
  }

  async function errorOf(response) {
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    return new ApiError(response.status, messageOf(data, response), data);
  }

  // Put a message into a status element (role=status or role=alert), as text only.
  function say(element, text, kind) {
    if (!element) return;
    element.textContent = text;
    element.classList.remove("ok", "error");
    if (kind) element.classList.add(kind);
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      if (button) {
        const before = button.textContent;
        button.textContent = "Copied";
        setTimeout(() => { button.textContent = before; }, 1500);
      }
    } catch (_) {
      if (button) button.textContent = "Select and copy";
    }
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Micro-USD as dollars, exactly as the server's `usd` filter writes them.
  function usd(micro) {
    const value = BigInt(micro);
    const sign = value < 0n ? "-" : "";
    const abs = value < 0n ? -value : value;
    const whole = abs / 1000000n;
    let frac = (abs % 1000000n).toString().padStart(6, "0").replace(/0+$/, "");
    frac = frac.padEnd(2, "0");
    return `${sign}$${whole.toLocaleString("en-US")}.${frac}`;
  }

  // What the console keeps in this browser (the chat's conversation) goes with the session: the
  // next person at a shared machine must not read it.
  function forgetLocalData() {
    for (const store of [window.sessionStorage, window.localStorage]) {
      for (const key of Object.keys(store)) {
        if (key.startsWith("darkbloom.")) store.removeItem(key);
      }
    }
  }

  document.addEventListener("click", async (event) => {
    const target = event.target.closest("[data-action='sign-out']");
    if (!target) return;
    try { await api("POST", "/v1/auth/logout"); } catch (_) { /* signed out already */ }
    forgetLocalData();
    window.location.assign("/signin");
  });

  return { api, ApiError, cookie, say, copy, el, usd };
})();
