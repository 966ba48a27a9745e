// Sign in / sign up. On sign-up the first API key is created and shown once (console.md).
"use strict";

(() => {
  const form = document.getElementById("auth-form");
  const error = document.getElementById("auth-error");
  const mode = form.dataset.mode;
  const next = form.dataset.next || "/chat";

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    darkbloom.say(error, "");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const email = form.elements.email.value.trim();
    const password = form.elements.password.value;
    try {
      await darkbloom.api("POST", mode === "signup" ? "/v1/auth/signup" : "/v1/auth/login",
                          { email, password });
      if (mode !== "signup") {
        window.location.assign(next);
        return;
      }
      const key = await darkbloom.api("POST", "/v1/auth/keys", { label: "first key" });
      form.classList.add("hidden");
      const panel = document.getElementById("first-key");
      document.getElementById("first-key-value").textContent = key.api_key;
      document.getElementById("first-key-continue").setAttribute("href", next);
      document.getElementById("first-key-copy").addEventListener(
        "click", (e) => darkbloom.copy(key.api_key, e.currentTarget));
      panel.classList.remove("hidden");
      document.getElementById("first-key-title").focus();
    } catch (exc) {
      darkbloom.say(error, exc.message, "error");
      button.disabled = false;
    }
  });
})();
