// The chat playground: streams /v1/chat/completions with this browser's session (cookie and
// CSRF header, through darkbloom.api), shows TTFT, tok/s and the token count as they happen, a
// "Thinking" block for reasoning_content, the provider's trust from the response headers, and
// a Verify button that checks the answer's receipt step by step (verify.js).
//
// Answers are rendered by markdown.js from DOM nodes and text: model output never becomes HTML.
// The conversation text (and nothing else: no key, no receipt) is kept in sessionStorage for this
// tab, under this account's id, so a reload keeps the chat and another account never sees it.
"use strict";

(() => {
  const root = document.getElementById("chat");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const log = $("chat-log");
  const form = $("chat-form");
  const input = $("chat-message");
  const modelSelect = $("chat-model");
  const maxTokensInput = $("chat-max-tokens");
  const sendButton = $("chat-send");
  const stopButton = $("chat-stop");
  const retryButton = $("chat-retry");
  const clearButton = $("chat-clear");
  const status = $("chat-status");
  const empty = $("chat-empty");
  const { el } = darkbloom;
  const V = darkbloomVerify;

  const STORE = `darkbloom.chat.${root.dataset.account}`;
  const MAX_STORED_TURNS = 100;
  const MAX_STORED_CHARS = 500000;
  const MIN_DECODE_S = 0.05;
  const WAITING = "waiting for a provider";
  const hasModels = modelSelect.options.length > 0;

  // {role, content, reasoning, model, view}: view is the answer's DOM (never stored).
  let turns = [];
  let controller = null;

  // --- the conversation kept in this tab --------------------------------------------------

  function save() {
    let kept = turns.filter((t) => t.content).map((t) => ({ role: t.role, content: t.content }))
      .slice(-MAX_STORED_TURNS);
    while (kept.length && JSON.stringify(kept).length > MAX_STORED_CHARS) kept = kept.slice(1);
    try {
      if (kept.length) sessionStorage.setItem(STORE, JSON.stringify({ turns: kept }));
      else sessionStorage.removeItem(STORE);
    } catch (_) { /* storage full or refused: the chat still works, unsaved */ }
  }

  function restore() {
    let saved = null;
    try { saved = JSON.parse(sessionStorage.getItem(STORE) || "null"); } catch (_) { saved = null; }
    const list = saved && Array.isArray(saved.turns) ? saved.turns : [];
    for (const t of list.slice(-MAX_STORED_TURNS)) {
      if (!t || !["user", "assistant"].includes(t.role) || typeof t.content !== "string") continue;
      const turn = { role: t.role, content: t.content, reasoning: "", model: "" };
      turns.push(turn);
      if (turn.role === "user") userView(turn);
      else {
        const view = answerView(turn);
        darkbloomMarkdown.render(view.body, turn.content);
        view.badge.textContent = "from this tab's history";
        view.note.textContent = "Kept from earlier in this tab; its receipt is not kept.";
        view.stats.classList.add("hidden");
      }
    }
  }

  // --- views -------------------------------------------------------------------------------

  function userView(turn) {
    empty.classList.add("hidden");
    turn.view = {
      article: el("article", { class: "turn user", "aria-label": "You asked" },
        el("h2", { class: "turn-who", text: "You" }),
        el("p", { class: "user-text", text: turn.content })),
    };
    log.append(turn.view.article);
    return turn.view;
  }

  function stat(name, className) {
    const value = el("dd", { class: className, text: "–" });
    return [el("div", {}, el("dt", { text: name }), value), value];
  }

  function answerView(turn) {
    empty.classList.add("hidden");
    const [ttftBox, ttft] = stat("TTFT", "stat-ttft");
    const [tpsBox, tps] = stat("tok/s", "stat-tps");
    const [tokensBox, tokens] = stat("Tokens", "stat-tokens");
    const view = {
      badge: el("span", { class: "badge trust", text: WAITING }),
      thinkingText: el("div", { class: "thinking-text" }),
      body: el("div", { class: "answer-body" }),
      error: el("p", { class: "message error", role: "alert" }),
      stats: el("dl", { class: "stats" }, ttftBox, tpsBox, tokensBox),
      ttft, tps, tokens,
      verifyButton: el("button", { type: "button", class: "secondary verify", disabled: "" }, "Verify"),
      note: el("span", { class: "muted answer-note" }),
      verdict: el("p", { class: "verify-verdict hidden" }),
      steps: el("ol", { class: "verify-steps hidden", "aria-label": "Receipt checks" }),
    };
    view.thinking = el("details", { class: "thinking hidden" }, el("summary", { text: "Thinking" }),
      view.thinkingText);
    view.article = el("article", { class: "turn assistant", "aria-label": "Answer" },
      el("div", { class: "turn-head" },
        el("h2", { class: "turn-who", text: turn.model ? `Answer · ${turn.model}` : "Answer" }),
        view.badge),
      view.thinking, view.body, view.error,
      el("div", { class: "answer-foot" }, view.stats, view.verifyButton, view.note),
      view.verdict, view.steps);
    view.verifyButton.addEventListener("click", () => verify(view));
    log.append(view.article);
    turn.view = view;
    return view;
  }

  const TRUST_WORDS = { hardware: "hardware-attested", self_signed: "self-signed", none: "no attestation" };
  const TRUST_KIND = { hardware: "ok", self_signed: "warn", none: "bad" };

  // The trust badge, from the headers the coordinator sets for the provider that answered.
  function showTrust(view, headers) {
    const level = headers.get("x-provider-trust-level");
    view.badge.classList.remove("ok", "warn", "bad");
    if (!level) {
      view.badge.textContent = "Trust: not stated";
      view.badge.classList.add("warn");
      return;
    }
    const chip = (headers.get("x-provider-chip") || "unknown chip").slice(0, 80);
    const attested = headers.get("x-provider-attested") === "true";
    view.badge.textContent = `Trust: ${TRUST_WORDS[level] || level.slice(0, 32)} · ${chip} · ` +
      (attested ? "attested key" : "no attested key");
    view.badge.classList.add(TRUST_KIND[level] || "warn");
  }

  function setBusy(busy) {
    sendButton.disabled = busy || !hasModels;
    stopButton.disabled = !busy;
    retryButton.disabled = busy || !turns.some((t) => t.role === "user") || !hasModels;
    clearButton.disabled = busy;
    if (hasModels) modelSelect.disabled = busy;
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 120;
  }

  // --- asking ------------------------------------------------------------------------------

  function maxTokens() {
    const n = Number(maxTokensInput.value);
    return Number.isInteger(n) && n >= 1 && n <= 32768 ? n : 512;
  }

  // Stream one answer to the conversation so far.
  async function ask() {
    const model = modelSelect.value;
    const messages = turns.filter((t) => t.content).map((t) => ({ role: t.role, content: t.content }));
    const turn = { role: "assistant", content: "", reasoning: "", model };
    turns.push(turn);
    const view = answerView(turn);
    // The body is serialized once: these exact bytes are sent and later checked against the
    // receipt's request_sha256 (the coordinator relays them to the provider unchanged).
    const requestText = JSON.stringify({
      model, messages, max_tokens: maxTokens(), stream: true, stream_options: { include_usage: true },
    });
    const record = {
      receiptText: null, events: [], parts: [], requestBody: new TextEncoder().encode(requestText),
    };
    view.record = record;
    const timing = { started: performance.now(), first: null, last: null, count: 0, usage: null };
    let finish = null;
    let pending = false;
    controller = new AbortController();
    setBusy(true);
    darkbloom.say(status, "Waiting for the answer");

    const paint = () => {
      pending = false;
      const follow = nearBottom();
      darkbloomMarkdown.render(view.body, turn.content);
      if (turn.reasoning) {
        view.thinking.classList.remove("hidden");
        view.thinkingText.textContent = turn.reasoning;
      }
      showStats(view, timing);
      if (follow) window.scrollTo(0, document.documentElement.scrollHeight);
    };
    const schedule = () => {
      if (!pending) { pending = true; requestAnimationFrame(paint); }
    };
    const token = () => {
      const now = performance.now();
      if (timing.first === null) timing.first = now;
      timing.last = now;
      timing.count += 1;
      schedule();
    };

    const handle = (event) => {
      record.events.push(event);
      record.parts.push(V.transcriptPart(event));
      const receipt = V.receiptTextOf(event);
      if (receipt !== null) { record.receiptText = receipt; return; }
      const data = V.dataOf(event);
      if (data === null || data === "[DONE]") return;
      let chunk = null;
      try { chunk = JSON.parse(data); } catch (_) { return; }
      if (!chunk || typeof chunk !== "object") return;
      if (chunk.error) {
        const message = typeof chunk.error.message === "string" ? chunk.error.message : "the answer failed";
        darkbloom.say(view.error, message.slice(0, 500), "error");
        return;
      }
      const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
      const delta = (choice && choice.delta) || {};
      if (typeof delta.reasoning_content === "string" && delta.reasoning_content) {
        turn.reasoning += delta.reasoning_content;
        token();
      }
      if (typeof delta.content === "string" && delta.content) {
        turn.content += delta.content;
        token();
      }
      if (choice && choice.finish_reason) finish = choice.finish_reason;
      if (chunk.usage && typeof chunk.usage === "object") timing.usage = chunk.usage;
    };

    try {
      const response = await darkbloom.api("POST", "/v1/chat/completions", requestText,
        { raw: true, signal: controller.signal, headers: { Accept: "text/event-stream" } });
      showTrust(view, response.headers);
      const reader = new V.SseReader();
      const body = response.body.getReader();
      for (;;) {
        const { value, done } = await body.read();
        for (const event of done ? reader.end() : reader.push(value)) handle(event);
        if (done) break;
      }
      if (finish === "length") view.note.textContent = "Stopped at the max tokens limit.";
      if (record.receiptText !== null) {
        view.verifyButton.disabled = false;
      } else {
        view.note.textContent = `${view.note.textContent} This answer came without a receipt.`.trim();
      }
      darkbloom.say(status, "Answer complete");
    } catch (exc) {
      if (exc && exc.name === "AbortError") {
        turn.stopped = true;
        view.note.textContent = "Stopped. A stopped answer has no receipt to verify.";
        darkbloom.say(status, "Stopped");
      } else {
        const message = exc instanceof darkbloom.ApiError ? exc.message : "the connection was lost";
        darkbloom.say(view.error, message, "error");
        if (view.badge.textContent === WAITING) view.badge.textContent = "no provider answered";
        darkbloom.say(status, `The answer failed: ${message}`);
      }
    } finally {
      controller = null;
      paint();
      if (!turn.content && !turn.reasoning) view.body.classList.add("hidden");
      save();
      setBusy(false);
    }
  }

  function showStats(view, timing) {
    if (timing.first === null) return;
    view.ttft.textContent = `${Math.round(timing.first - timing.started)} ms`;
    const usage = timing.usage;
    const tokens = usage && Number.isInteger(usage.completion_tokens) ? usage.completion_tokens : timing.count;
    view.tokens.textContent = String(tokens);
    // Decode speed: the tokens after the first over the time since the first; live while
    // streaming, from the final usage count once the answer is complete. An answer that
    // arrived in one burst (buffered on the way) has no speed to show.
    const end = usage ? timing.last : performance.now();
    const seconds = (end - timing.first) / 1000;
    view.tps.textContent = tokens > 1 && seconds >= MIN_DECODE_S ? ((tokens - 1) / seconds).toFixed(1) : "–";
  }

  // --- verifying ---------------------------------------------------------------------------

  const RESULT = { true: ["ok", "✓", "passed"], false: ["bad", "✗", "failed"], null: ["skip", "–", "not checked"] };

  function catalog() {
    const weights = new Map();
    for (const option of modelSelect.options) weights.set(option.value, option.dataset.weightHash || "");
    return weights;
  }

  async function verify(view) {
    const record = view.record;
    if (!record) return;
    view.verifyButton.disabled = true;
    view.steps.replaceChildren();
    view.verdict.classList.remove("hidden");
    darkbloom.say(view.verdict, "Checking the receipt…");
    try {
      const listing = await darkbloom.api("GET", "/v1/providers/attestation");
      const steps = await V.verifyStream({
        receiptText: record.receiptText, transcript: V.concat(...record.parts), events: record.events,
        providers: listing && Array.isArray(listing.providers) ? listing.providers : [],
        requestBody: record.requestBody, catalog: catalog(),
      });
      for (const step of steps) {
        const [kind, mark, word] = RESULT[String(step.ok)];
        view.steps.append(el("li", { class: `step ${kind}` },
          el("span", { class: "step-mark", "aria-hidden": "true", text: mark }),
          el("span", { class: "step-name", text: step.name }),
          el("strong", { class: "step-result", text: word }),
          step.detail ? el("span", { class: "step-detail", text: step.detail }) : ""));
      }
      view.steps.classList.remove("hidden");
      // Verified only when every step ran and passed: a step that could not run is no pass.
      const failed = steps.filter((s) => s.ok === false).map((s) => s.name);
      const unchecked = steps.filter((s) => s.ok === null).map((s) => s.name);
      const why = [failed.length ? `${failed.join("; ")} failed.` : "",
        unchecked.length ? `${unchecked.join("; ")} could not be checked.` : ""].filter(Boolean).join(" ");
      if (why) darkbloom.say(view.verdict, `Not verified: ${why}`, failed.length ? "error" : undefined);
      else darkbloom.say(view.verdict, "Verified: every check passed.", "ok");
      darkbloom.say(status, why ? "Receipt not verified" : "Receipt verified");
    } catch (exc) {
      darkbloom.say(view.verdict, `Could not verify: ${exc && exc.message ? exc.message : exc}`, "error");
    } finally {
      view.verifyButton.disabled = false;
    }
  }

  // --- controls ----------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller || !hasModels) return;
    const turn = { role: "user", content: text };
    turns.push(turn);
    userView(turn);
    input.value = "";
    ask();
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.ctrlKey && !event.altKey && !event.metaKey &&
        !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => {
    if (controller) controller.abort();
    input.focus();
  });

  // Retry: drop everything after the last message you wrote and ask again.
  retryButton.addEventListener("click", () => {
    if (controller) return;
    let last = turns.length - 1;
    while (last >= 0 && turns[last].role !== "user") last -= 1;
    if (last < 0) return;
    for (const turn of turns.splice(last + 1)) if (turn.view) turn.view.article.remove();
    ask();
  });

  clearButton.addEventListener("click", () => {
    if (controller) return;
    for (const turn of turns) if (turn.view) turn.view.article.remove();
    turns = [];
    save();
    empty.classList.remove("hidden");
    setBusy(false);
    input.focus();
  });

  restore();
  setBusy(false);
})();
