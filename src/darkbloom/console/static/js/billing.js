// Billing page: Buy credits (to Stripe Checkout, and the payment's check on return), redeem an
// invite code, and "Load more" usage rows. Rows are built with textContent only.
"use strict";

(() => {
  const credits = document.getElementById("balance-credits");
  const withdrawable = document.getElementById("balance-withdrawable");
  const balanceStatus = document.getElementById("balance-status");
  const OFF = "Buying credits is off on this coordinator: its operator has not set up Stripe.";

  async function refreshBalance() {
    const held = await darkbloom.api("GET", "/v1/payments/balance");
    credits.textContent = darkbloom.usd(held.balance_micro_usd);
    withdrawable.textContent = darkbloom.usd(held.withdrawable_micro_usd);
  }

  // --- Buy credits ------------------------------------------------------------------------------
  const buyForm = document.getElementById("buy-form");
  const buyError = document.getElementById("buy-error");
  buyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    darkbloom.say(buyError, "");
    const amount = buyForm.elements.amount.value.trim().replace(/^\$/, "");
    if (!/^\d{1,7}(\.\d{1,2})?$/.test(amount)) {
      darkbloom.say(buyError, "Enter an amount in US dollars, like 10 or 25.50.", "error");
      buyForm.elements.amount.focus();
      return;
    }
    const button = buyForm.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const made = await darkbloom.api("POST", "/v1/billing/stripe/create-session", { amount_usd: amount });
      window.location.assign(made.url);
    } catch (exc) {
      darkbloom.say(buyError, exc.status === 503 ? OFF : exc.message, "error");
      button.disabled = false;
    }
  });

  // Back from Checkout: the success URL carries ?session_id=cs_…; asking about it credits a paid
  // session at once (the webhook may come later). Pending is asked again a few times.
  const sleep = (ms) => new Promise((done) => { setTimeout(done, ms); });

  async function checkPayment(ref) {
    darkbloom.say(balanceStatus, "Checking your payment…");
    try {
      for (let attempt = 0; attempt < 6; attempt += 1) {
        const found = await darkbloom.api("GET", `/v1/billing/stripe/session?id=${encodeURIComponent(ref)}`);
        if (found.status === "completed") {
          await refreshBalance();
          darkbloom.say(balanceStatus,
                        `Payment received: ${darkbloom.usd(found.amount_micro_usd)} added to your credits.`, "ok");
          return;
        }
        if (found.status !== "pending") {
          darkbloom.say(balanceStatus, `This payment was not completed (${found.status}); nothing was charged.`,
                        "error");
          return;
        }
        await sleep(2000);
      }
      darkbloom.say(balanceStatus, "Your payment is still being processed; your credits update once "
                    + "Stripe confirms it. Reload this page in a minute.");
    } catch (exc) {
      darkbloom.say(balanceStatus, `Could not check the payment: ${exc.message}`, "error");
    }
  }

  const params = new URLSearchParams(window.location.search);
  const returned = params.get("session_id");
  if (returned || params.get("checkout") === "cancelled") {
    window.history.replaceState(null, "", window.location.pathname);  // a reload asks nothing again
    if (returned) checkPayment(returned);
    else darkbloom.say(balanceStatus, "Checkout cancelled: nothing was charged.");
  }

  // --- Invite code ------------------------------------------------------------------------------
  const inviteForm = document.getElementById("invite-form");
  const inviteError = document.getElementById("invite-error");
  inviteForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    darkbloom.say(inviteError, "");
    const code = inviteForm.elements.code.value.trim();
    if (!code) {
      darkbloom.say(inviteError, "Enter the invite code.", "error");
      inviteForm.elements.code.focus();
      return;
    }
    const button = inviteForm.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const done = await darkbloom.api("POST", "/v1/invite/redeem", { code });
      credits.textContent = darkbloom.usd(done.balance_micro_usd);
      darkbloom.say(balanceStatus, `Invite code redeemed: ${darkbloom.usd(done.credited_micro_usd)} added `
                    + "to your credits.", "ok");
      inviteForm.reset();
    } catch (exc) {
      darkbloom.say(inviteError, exc.message, "error");
    } finally {
      button.disabled = false;
    }
  });

  // --- Usage: "Load more" -----------------------------------------------------------------------
  const more = document.getElementById("usage-more");
  const usageBody = document.getElementById("usage-body");
  const usageStatus = document.getElementById("usage-status");

  function rowOf(item) {
    const stamp = String(item.timestamp);
    const num = (text) => darkbloom.el("td", { class: "num", text });
    return darkbloom.el("tr", {},
      darkbloom.el("td", { text: `${stamp.slice(0, 10)} ${stamp.slice(11, 19)} UTC` }),
      darkbloom.el("td", { text: String(item.model) }),
      num(String(item.prompt_tokens)), num(String(item.completion_tokens)),
      num(darkbloom.usd(item.cost_micro_usd)));
  }

  more.addEventListener("click", async () => {
    more.disabled = true;
    darkbloom.say(usageStatus, "");
    const size = Number(more.dataset.page) || 50;
    try {
      const page = await darkbloom.api(
        "GET", `/v1/payments/usage?limit=${size}&before=${encodeURIComponent(more.dataset.before)}`);
      for (const item of page.usage) usageBody.append(rowOf(item));
      if (page.usage.length) more.dataset.before = page.usage[page.usage.length - 1].timestamp;
      const last = page.usage.length < size;
      darkbloom.say(usageStatus, `${page.usage.length} more request${page.usage.length === 1 ? "" : "s"} `
                    + `shown${last ? "; that is all of them" : ""}.`);
      if (last) {
        more.classList.add("hidden");
        document.getElementById("usage-title").focus();  // the focused button is gone
      }
    } catch (exc) {
      darkbloom.say(usageStatus, `Could not load more: ${exc.message}`, "error");
    } finally {
      more.disabled = false;
    }
  });
})();
