"""The public pages in Chromium: Models, Network stats (charts, provider table, refreshing itself
without a reload) and the Earn calculator (the formula's figures as inputs change)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from playwright.sync_api import expect

from darkbloom.console.hardware import BY_ID
from darkbloom.console.pages.earn import count, dollars, estimate, rate
from darkbloom.coordinator.store import network_stats
from darkbloom.inference.catalog import SMOLLM2_135M
from tests.browser.conftest import ConsoleStack, Ui
from tests.e2e.harness import MODEL


def _requests_settled(console: ConsoleStack) -> int:
    """Settled requests in the database. In a thread: Playwright's sync API holds this one's
    event loop, and ``console.db`` runs its own."""
    with ThreadPoolExecutor(1) as pool:
        totals: network_stats.UsageTotals = pool.submit(console.db, network_stats.usage_totals).result()
    return totals.requests


def test_models_page_lists_the_served_model_with_its_price(ui: Ui) -> None:
    ui.goto("/models")
    page = ui.page
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()
    row = page.get_by_role("row").filter(has_text=SMOLLM2_135M.display_name)
    expect(row).to_have_count(1)
    expect(row.get_by_role("cell").nth(1)).to_have_text("1")  # the console stack's provider
    expect(row).to_contain_text("$0.05")  # input, per 1M tokens
    expect(row).to_contain_text("$0.20")  # output
    expect(row).to_contain_text("8,192 tokens")
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    ui.shot("models")


def test_network_page_shows_charts_providers_and_refreshes_itself(ui: Ui) -> None:
    console = ui.stack
    stats = httpx.get(f"{console.url}/v1/stats", timeout=30).json()
    chip = stats["providers"][0]["chip"] or "unknown"
    ui.goto("/network")
    page = ui.page
    charts = page.locator("svg[role=img]")
    expect(charts).to_have_count(2)
    expect(page.get_by_role("img", name="Requests per minute, last 30 minutes (UTC)")).to_be_visible()
    expect(page.get_by_role("img", name="Tokens per minute, last 30 minutes (UTC)")).to_be_visible()
    assert charts.first.locator("title").text_content() == "Requests per minute, last 30 minutes (UTC)"
    providers = page.get_by_role("table", name="Connected providers")
    expect(providers.get_by_role("row").filter(has_text=chip).first).to_contain_text(MODEL)
    expect(page.get_by_role("heading", name="Leaderboard")).to_be_visible()

    # A request now: the page shows it on its own, without a reload.
    page.evaluate("() => { window.notReloaded = true; }")
    before = _requests_settled(console)
    console.coordinator.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
    deadline = time.monotonic() + 15
    while (after := _requests_settled(console)) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert after > before, "the request's usage row was never written"
    page.wait_for_function(
        "n => Number(document.getElementById('figure-requests').textContent.replace(/,/g, '')) >= n",
        arg=after, timeout=25_000)
    assert page.evaluate("() => window.notReloaded === true")
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Updated at \d\d:\d\d:\d\d UTC$"))
    expect(charts).to_have_count(2)
    ui.shot("network")


def test_earn_calculator_gives_the_formulas_figures(ui: Ui) -> None:
    ui.goto("/earn")
    page = ui.page
    machine = BY_ID["m2-max"]
    page.get_by_label("Hardware").select_option(label=machine.name)
    page.get_by_label("Memory (GB)").select_option(label="64 GB")
    page.get_by_label("Model").select_option(value=SMOLLM2_135M.id)
    page.get_by_label("Hours per day").fill("10")
    page.get_by_label("Electricity price (USD per kWh)").fill("0.27")
    want = estimate(machine.bandwidth_gbs, machine.power_w, 64, 10, 0.27, SMOLLM2_135M.size_bytes,
                    SMOLLM2_135M.min_ram_gb, SMOLLM2_135M.output_price, 0)
    expect(page.locator("#earn-tps")).to_have_text(rate(want.tokens_per_s))
    expect(page.locator("#earn-tokens")).to_have_text(count(want.tokens_per_day))
    expect(page.locator("#earn-revenue-day")).to_have_text(dollars(want.revenue_day))
    expect(page.locator("#earn-power-day")).to_have_text(dollars(want.electricity_day))
    expect(page.locator("#earn-net-month")).to_have_text(dollars(want.net_month))
    assert want.tokens_per_s > 2000  # 400 GB/s over a 98 MB model
    ui.shot("earn")

    # Another machine: its memory sizes replace the last ones, the figures follow at once.
    small = BY_ID["m1"]
    page.get_by_label("Hardware").select_option(label=small.name)
    expect(page.get_by_label("Memory (GB)").locator("option")).to_have_text(["8 GB", "16 GB"])
    want = estimate(small.bandwidth_gbs, small.power_w, 16, 10, 0.27, SMOLLM2_135M.size_bytes,
                    SMOLLM2_135M.min_ram_gb, SMOLLM2_135M.output_price, 0)
    expect(page.locator("#earn-tps")).to_have_text(rate(want.tokens_per_s))
    expect(page.locator("#earn-net-day")).to_have_text(dollars(want.net_day))
    expect(page.get_by_role("alert")).to_be_hidden()


def test_public_pages_render_for_a_signed_in_visitor_too(ui: Ui) -> None:
    email, _ = ui.sign_up()
    page = ui.page
    for path, heading in (("/models", "Models"), ("/network", "Network"), ("/earn", "Earn calculator")):
        ui.goto(path)
        expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        expect(page.get_by_text(email)).to_be_visible()
    expect(page.get_by_label("Hours per day")).to_have_value("12.0")
