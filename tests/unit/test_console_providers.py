"""What the provider dashboard says about a machine (console.md: stale attestation, thermal,
cold model), and the small helpers of the dashboard and Link device pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from darkbloom.console.pages.link import prefill
from darkbloom.console.pages.providers import jobs, machine_view, provider_ws_url, when

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
WINDOW = 360.0


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "provider_key": "AbCdEf0123456789xyz", "status": "online", "online": True, "attention": [],
        "last_challenge_verified": (NOW - timedelta(seconds=30)).isoformat().replace("+00:00", "Z"),
        "failed_challenges": 0, "models": ["m1", "m2"], "warm_models": ["m1", "m2"],
        "system_metrics": {"thermal_state": "nominal", "memory_pressure": 0.2}}
    entry.update(changes)
    return entry


def test_a_healthy_machine_has_nothing_to_say() -> None:
    view = machine_view(_entry(), WINDOW, NOW)
    assert view.warnings == [] and view.notes == [] and view.cold == set()
    assert view.status_kind == "ok" and view.name == "attested key AbCdEf0123456789…"


def test_stale_attestation_thermal_and_memory_are_warnings() -> None:
    stale = (NOW - timedelta(seconds=WINDOW + 1)).isoformat()
    view = machine_view(_entry(last_challenge_verified=stale, attention=["untrusted: ..."],
                               system_metrics={"thermal_state": "critical", "memory_pressure": 0.95}),
                        WINDOW, NOW)
    assert view.warnings[0] == "untrusted: ..."
    assert any(w.startswith("stale attestation") for w in view.warnings)
    assert any("thermal state critical" in w for w in view.warnings)
    assert any("memory pressure 95%" in w for w in view.warnings)


def test_a_cold_model_is_a_note_and_a_fresh_machine_awaits_its_first_challenge() -> None:
    view = machine_view(_entry(warm_models=["m1"], last_challenge_verified=None), WINDOW, NOW)
    assert view.cold == {"m2"} and view.warnings == []
    assert any(n.startswith("cold model(s) m2") for n in view.notes)
    assert any("no challenge passed yet" in n for n in view.notes)


def test_offline_and_never_seen_machines() -> None:
    offline = machine_view(_entry(status="offline", online=False, warm_models=[]), WINDOW, NOW)
    assert offline.warnings == [] and offline.notes == [] and offline.status_kind == ""
    never = machine_view(_entry(status="never_seen", online=False, provider_key="token:abcdef"),
                         WINDOW, NOW)
    assert never.status_kind == "warn" and "darkbloom start" in never.notes[0]
    assert never.name.startswith("unattested machine (token abcdef")


def test_helpers() -> None:
    assert provider_ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws/provider"
    assert provider_ws_url("https://db.example.com/") == "wss://db.example.com/ws/provider"
    assert when("2026-01-02T03:04:05.123Z") == "2026-01-02 03:04:05 UTC"
    assert when(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04:05 UTC"  # SQLite: naive UTC
    assert when(None) == "—" and when("not a time") == "—"
    assert (jobs(1), jobs(0), jobs(1234)) == ("1 job", "0 jobs", "1,234 jobs")
    assert prefill(" abcd-efgh ") == "ABCD-EFGH"
    assert prefill(None) == prefill("") == prefill("A" * 33) == prefill("ab\x00cd") == ""
