"""Trust settings: require_posture is checked when the coordinator starts, not at the first provider."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from darkbloom.config import CoordinatorSettings


def test_require_posture_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKBLOOM_REQUIRE_POSTURE", '{"core_dumps_disabled": true, "ptrace_scope": 1}')
    assert CoordinatorSettings().require_posture == {"core_dumps_disabled": True, "ptrace_scope": 1}
    monkeypatch.delenv("DARKBLOOM_REQUIRE_POSTURE")
    assert CoordinatorSettings().require_posture == {}


@pytest.mark.parametrize("bad", [{"ptrace_scope": True}, {"core_dumps_disabled": 1},
                                 {"kernel_lockdown": "full"}, {"sip_enabled": True}])
def test_require_posture_refuses_unknown_fields_and_wrong_types(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CoordinatorSettings(require_posture=bad)  # type: ignore[arg-type]


def test_pass_window_is_six_minutes_for_the_default_interval() -> None:
    settings = CoordinatorSettings()
    assert (settings.challenge_interval_s, settings.challenge_timeout_s) == (300, 30)
    assert settings.pass_window_s == pytest.approx(360)
    assert settings.quarantine_s == 3600
