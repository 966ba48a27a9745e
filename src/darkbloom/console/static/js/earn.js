// Earn calculator: recompute as the inputs change. The formula is pages/earn.py's `estimate`,
// operation for operation (so both give the same figures): tok/s = bandwidth / model bytes × 0.6.
"use strict";

(() => {
  const form = document.getElementById("earn-form");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const hardware = $("earn-hardware");
  const memory = $("earn-memory");
  const model = $("earn-model");
  const hours = $("earn-hours");
  const kwh = $("earn-kwh");
  const feeBps = Number(form.dataset.feeBps) || 0;
  const EFFICIENCY = 0.6;
  const DAYS_PER_MONTH = 30;

  function clamp(input, ceiling) {
    const value = Number(input.value);
    return Number.isFinite(value) ? Math.min(Math.max(value, 0), ceiling) : 0;
  }

  function estimate(bandwidthGbs, powerW, memoryGb, hoursPerDay, kwhUsd, modelBytes, needsGb,
                    outputPrice) {
    if (!(modelBytes > 0 && needsGb <= memoryGb)) {
      return { fits: false, tokensPerS: 0, tokensPerDay: 0, revenueDay: 0, electricityDay: 0 };
    }
    const tokensPerS = bandwidthGbs * 1e9 / modelBytes * EFFICIENCY;
    const tokensPerDay = tokensPerS * 3600 * hoursPerDay;
    const revenueDay = tokensPerDay / 1e6 * outputPrice / 1e6 * (1 - feeBps / 10000);
    const electricityDay = powerW * hoursPerDay / 1000 * kwhUsd;
    return { fits: true, tokensPerS, tokensPerDay, revenueDay, electricityDay };
  }

  const fixed = (digits) => new Intl.NumberFormat("en-US",
    { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const oneDecimal = fixed(1), whole = fixed(0), cents = fixed(2);
  const dollars = (value) => `${value < 0 ? "-" : ""}$${cents.format(Math.abs(value))}`;

  function setMemoryOptions() {
    const option = hardware.selectedOptions[0];
    if (!option) return;
    const sizes = option.dataset.memory.split(" ").map(Number);
    const before = Number(memory.value);
    const keep = sizes.includes(before) ? before : sizes[sizes.length - 1];
    memory.replaceChildren(...sizes.map((size) => {
      const choice = darkbloom.el("option", { value: String(size) }, `${size} GB`);
      choice.selected = size === keep;
      return choice;
    }));
    darkbloom.say($("earn-machine-note"),
      `${option.dataset.bandwidth} GB/s memory bandwidth, about ${option.dataset.power} W while generating.`);
  }

  function update() {
    const machine = hardware.selectedOptions[0];
    const chosen = model.selectedOptions[0];
    if (!machine || !chosen) return;
    const memoryGb = Number(memory.value);
    const needsGb = Number(chosen.dataset.needsGb);
    const result = estimate(Number(machine.dataset.bandwidth), Number(machine.dataset.power),
      memoryGb, clamp(hours, 24), clamp(kwh, 10), Number(chosen.dataset.bytes), needsGb,
      Number(chosen.dataset.outputPrice));
    const fit = $("earn-fit");
    fit.classList.toggle("hidden", result.fits);
    fit.textContent = result.fits ? ""
      : `This model needs about ${needsGb} GB of memory: more than ${memoryGb} GB.`;
    const netDay = result.revenueDay - result.electricityDay;
    $("earn-tps").textContent = oneDecimal.format(result.tokensPerS);
    $("earn-tokens").textContent = whole.format(result.tokensPerDay);
    $("earn-revenue-day").textContent = dollars(result.revenueDay);
    $("earn-revenue-month").textContent = dollars(result.revenueDay * DAYS_PER_MONTH);
    $("earn-power-day").textContent = dollars(result.electricityDay);
    $("earn-power-month").textContent = dollars(result.electricityDay * DAYS_PER_MONTH);
    $("earn-net-day").textContent = dollars(netDay);
    $("earn-net-month").textContent = dollars(netDay * DAYS_PER_MONTH);
  }

  hardware.addEventListener("change", () => { setMemoryOptions(); update(); });
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  form.addEventListener("submit", (event) => { event.preventDefault(); update(); });
  update();
})();
