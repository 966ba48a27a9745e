"""The public console pages' logic without a server: the Earn calculator's formula (earn.js
mirrors it), its form parsing, the hardware table, the Models rows and the Network live section's
figures and escaping."""

from __future__ import annotations

from typing import Any

import pytest

from darkbloom.console.hardware import BY_ID, DEFAULT, KINDS, MACHINES
from darkbloom.console.pages.earn import _number, count, dollars, estimate, rate
from darkbloom.console.pages.models import model_rows
from darkbloom.console.pages.network import PROVIDER_ROWS, figures, live_context
from darkbloom.console.render import templates
from darkbloom.coordinator.pricing import Price
from darkbloom.coordinator.routing.scheduler import ModelSummary
from darkbloom.inference.catalog import SMOLLM2_135M, Catalog

SMOL_BYTES = SMOLLM2_135M.size_bytes


def test_speed_is_bandwidth_over_model_bytes_times_point_six() -> None:
    got = estimate(400, 60, 64, 10, 0.25, SMOL_BYTES, SMOLLM2_135M.min_ram_gb, 200_000, 0)
    tokens_per_s = 400e9 / SMOL_BYTES * 0.6
    assert got.fits
    assert got.tokens_per_s == pytest.approx(tokens_per_s)
    assert got.tokens_per_day == pytest.approx(tokens_per_s * 36_000)
    # $0.20 per 1M output tokens.
    assert got.revenue_day == pytest.approx(tokens_per_s * 36_000 / 1e6 * 0.20)
    assert got.electricity_day == pytest.approx(60 * 10 / 1000 * 0.25)  # 0.6 kWh at $0.25
    assert got.net_day == pytest.approx(got.revenue_day - got.electricity_day)
    assert got.net_month == pytest.approx(got.net_day * 30)
    assert got.revenue_month == pytest.approx(got.revenue_day * 30)
    assert got.electricity_month == pytest.approx(got.electricity_day * 30)


def test_a_70b_class_model_on_an_m2_ultra() -> None:
    """A 40 GB model at 800 GB/s: 12 tok/s, the figure people quote for such machines."""
    got = estimate(800, 120, 192, 24, 0.10, 40 * 10**9, 48, 1_000_000, 0)
    assert got.tokens_per_s == pytest.approx(12.0)
    assert got.revenue_day == pytest.approx(12 * 86_400 / 1e6 * 1.0)
    assert got.electricity_day == pytest.approx(0.288)


def test_platform_fee_comes_off_revenue() -> None:
    free = estimate(400, 60, 64, 10, 0, SMOL_BYTES, 1, 200_000, 0)
    fee = estimate(400, 60, 64, 10, 0, SMOL_BYTES, 1, 200_000, 1_500)
    assert fee.revenue_day == pytest.approx(free.revenue_day * 0.85)


def test_a_model_that_does_not_fit_earns_and_costs_nothing() -> None:
    got = estimate(400, 60, 8, 10, 0.25, SMOL_BYTES, 9.5, 200_000, 0)
    assert not got.fits
    assert (got.tokens_per_s, got.revenue_day, got.electricity_day, got.net_month) == (0, 0, 0, 0)
    assert not estimate(400, 60, 8, 10, 0.25, 0, 0, 200_000, 0).fits  # no bytes: no division


def test_zero_hours_is_zero_money() -> None:
    got = estimate(400, 60, 64, 0, 0.25, SMOL_BYTES, 1, 200_000, 0)
    assert got.fits and got.tokens_per_s > 0
    assert got.revenue_day == got.electricity_day == got.net_day == 0


def test_figures_are_written_as_the_page_writes_them() -> None:
    assert rate(2440.04) == "2,440.0"
    assert count(35_969_830.4) == "35,969,830"
    assert dollars(1234.567) == "$1,234.57"
    assert dollars(-0.5) == "-$0.50"
    assert dollars(0) == "$0.00"


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 12.0), ("", 12.0), ("abc", 12.0), ("nan", 12.0), ("inf", 12.0), ("1e400", 12.0),
    ("-3", 0.0), ("30", 24.0), ("7.5", 7.5), ("1" * 40, 12.0),
])
def test_form_numbers_are_bounded_and_never_fail(raw: str | None, expected: float) -> None:
    assert _number(raw, 12.0, 24.0) == expected


def test_hardware_table_is_well_formed() -> None:
    assert len(BY_ID) == len(MACHINES)
    assert DEFAULT in MACHINES
    for machine in MACHINES:
        assert machine.kind in KINDS
        assert machine.bandwidth_gbs > 0 and machine.power_w > 0
        assert machine.memory_gb and list(machine.memory_gb) == sorted(set(machine.memory_gb))
    names = {m.name for m in MACHINES}
    for chip in ("Apple M1", "Apple M2 Max", "Apple M3 Ultra", "Apple M4 Pro", "NVIDIA GeForce RTX 4090"):
        assert chip in names
    for kind in KINDS:
        assert any(m.kind == kind for m in MACHINES)


class _Prices:
    def price(self, model: Any) -> Price:
        return Price(7, 11) if model.id == "smollm2-135m" else Price(model.input_price, model.output_price)


def test_models_rows_show_live_providers_trust_and_current_price() -> None:
    from dataclasses import replace
    other = replace(SMOLLM2_135M, id="other", display_name="Another", aliases=())
    rows = model_rows(Catalog((other, SMOLLM2_135M)),
                      {"smollm2-135m": ModelSummary(3, 1, "hardware")}, _Prices())  # type: ignore[arg-type]
    assert [r.id for r in rows] == ["smollm2-135m", "other"]  # served first
    assert (rows[0].providers, rows[0].trust, rows[0].input_price, rows[0].output_price) == \
        (3, "Hardware-attested", 7, 11)
    assert (rows[1].providers, rows[1].trust) == (0, "")


def _provider(chip: str, status: str = "online", trust: str = "self_signed") -> dict[str, Any]:
    return {"id": chip, "chip": chip, "machine_model": "", "memory_gb": 64, "status": status,
            "trust_level": trust, "decode_tps": 50.5, "models": ["smollm2-135m"]}


def _stats(providers: list[dict[str, Any]]) -> dict[str, Any]:
    series = [{"timestamp": f"2026-01-01T10:{m:02d}:00Z", "requests": m, "prompt_tokens": 0,
               "completion_tokens": 0, "total_tokens": 10 * m} for m in range(30)]
    return {"total_tokens": 1_234_567, "total_requests": 4_321, "providers": providers,
            "models": [{"id": "smollm2-135m", "providers": 2}], "time_series": series}


def test_network_figures_count_online_providers_by_trust() -> None:
    stats = _stats([_provider("a", trust="hardware"), _provider("b", "serving"),
                    _provider("c", "unroutable"), _provider("d", "untrusted", "none")])
    got = figures(stats)
    assert (got.tokens, got.requests, got.providers_online, got.models) == (1_234_567, 4_321, 2, 1)
    assert got.by_trust == [("Hardware-attested", 1), ("Self-signed", 1), ("Unverified", 0)]


def test_network_live_section_renders_charts_and_escapes_provider_text() -> None:
    hostile = '<img src=x onerror="alert(1)">'
    many = [_provider(f"chip {i}") for i in range(PROVIDER_ROWS + 5)] + [_provider(hostile)]
    context = live_context(_stats(many), [{"rank": 1, "pseudonym": "prov-<b>x</b>",
                                           "earnings_micro_usd": 1_500_000, "tokens": 10, "jobs": 2}])
    html = templates.env.get_template("network_live.html").render(context)
    assert html.count('role="img"') == 2
    assert "<title>Requests per minute, last 30 minutes (UTC)</title>" in html
    assert "<title>Tokens per minute, last 30 minutes (UTC)</title>" in html
    assert "1,234,567" in html and "4,321" in html
    assert "<img" not in html and "&lt;img src=x" in html
    assert "<b>x</b>" not in html and "$1.50" in html
    assert html.count("<tr>") - 2 <= PROVIDER_ROWS + 1  # bounded (header rows and one leader)
    assert "and 6 more." in html
