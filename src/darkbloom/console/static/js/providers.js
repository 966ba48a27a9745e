// Provider dashboard actions: Stripe Connect onboarding, withdraw, revoke a linked device's token.
// Everything goes through the public API with this browser's session (darkbloom.api); messages
// from the server are shown as text.
"use strict";

(() => {
  const onboard = document.getElementById("onboard");
  const onboardMessage = document.getElementById("onboard-message");
  const withdrawForm = document.getElementById("withdraw-form");
  const withdrawMessage = document.getElementById("withdraw-message");
  const tokensMessage = document.getElementById("tokens-message");

  // Back from Stripe (?stripe=return or refresh): ask the coordinator to look the account up
  // again, then show the page without the query so a reload does not ask twice.
  const back = new URLSearchParams(window.location.search).get("stripe");
  if (back === "return" || back === "refresh") {
    darkbloom.api("GET", "/v1/billing/stripe/status?refresh=1")
      .catch(() => null)
      .finally(() => window.location.replace("/providers#withdraw"));
  }

  if (onboard) {
    onboard.addEventListener("click", async () => {
      onboard.disabled = true;
      darkbloom.say(onboardMessage, "Opening Stripe…");
      try {
        const here = window.location.origin + "/providers?stripe=";
        const answer = await darkbloom.api("POST", "/v1/billing/stripe/onboard",
                                           { return_url: here + "return", refresh_url: here + "refresh" });
        window.location.assign(answer.url);
      } catch (exc) {
        darkbloom.say(onboardMessage, exc.message, "error");
        onboard.disabled = false;
      }
    });
  }

  if (withdrawForm) {
    withdrawForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = withdrawForm.elements.amount;
      const amount = input.value.trim().replace(/^\$/, "");
      if (!/^[0-9]{1,9}(\.[0-9]{1,2})?$/.test(amount)) {
        darkbloom.say(withdrawMessage, "Enter an amount in US dollars, like 10.00.", "error");
        input.focus();
        return;
      }
      const button = withdrawForm.querySelector("button[type=submit]");
      button.disabled = true;
      darkbloom.say(withdrawMessage, "Withdrawing…");
      try {
        const answer = await darkbloom.api("POST", "/v1/billing/withdraw/stripe", { amount_usd: amount });
        const eta = answer.eta ? ` It should arrive ${answer.eta}.` : "";
        const text = answer.message
          ? `$${answer.amount_usd} withdrawn: ${answer.message}.`
          : `$${answer.amount_usd} withdrawn ($${answer.net_usd} after the $${answer.fee_usd} fee).${eta}`;
        darkbloom.say(withdrawMessage, text, "ok");
        input.value = "";
      } catch (exc) {
        darkbloom.say(withdrawMessage, exc.message, "error");
      } finally {
        button.disabled = false;
      }
    });
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-revoke]");
    if (!button) return;
    const row = button.closest("tr");
    const prefix = row ? row.querySelector("code").textContent : "this token";
    if (!window.confirm(`Revoke ${prefix}? The machine using it is disconnected and must run darkbloom login again.`)) {
      return;
    }
    button.disabled = true;
    try {
      await darkbloom.api("DELETE", "/v1/me/provider-tokens", { id: button.dataset.revoke });
      if (row) row.remove();
      darkbloom.say(tokensMessage, `Revoked ${prefix}.`, "ok");
    } catch (exc) {
      darkbloom.say(tokensMessage, exc.message, "error");
      button.disabled = false;
    }
  });
})();
