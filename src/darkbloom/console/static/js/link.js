// Link device: approve the code `darkbloom login` shows (POST /v1/device/approve) and say what
// happens next, or why the code was refused, in words.
"use strict";

(() => {
  const form = document.getElementById("link-form");
  const error = document.getElementById("link-error");
  const done = document.getElementById("linked");
  const input = form.elements.user_code;

  // What each refusal means for the person at the keyboard (device.py's statuses).
  const REFUSED = {
    400: "Enter the code your terminal shows, like ABCD-EFGH.",
    404: "No such code. Check the code your terminal shows (it is case-insensitive).",
    409: "This code was already used. Run darkbloom login again for a new one.",
    410: "This code has expired. Run darkbloom login again for a new one.",
    429: "Too many attempts. Wait a minute and try again.",
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    darkbloom.say(error, "");
    const code = input.value.trim();
    if (!code) {
      darkbloom.say(error, REFUSED[400], "error");
      input.focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await darkbloom.api("POST", "/v1/device/approve", { user_code: code });
      form.classList.add("hidden");
      done.classList.remove("hidden");
      document.getElementById("linked-title").focus();
    } catch (exc) {
      const known = exc instanceof darkbloom.ApiError ? REFUSED[exc.status] : undefined;
      darkbloom.say(error, known || exc.message, "error");
      input.focus();
    } finally {
      button.disabled = false;
    }
  });

  document.getElementById("link-another").addEventListener("click", () => {
    input.value = "";
    done.classList.add("hidden");
    form.classList.remove("hidden");
    input.focus();
  });
})();
