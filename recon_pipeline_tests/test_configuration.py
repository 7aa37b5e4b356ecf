"""Configuration from the environment: bound with EnvVar, refused when the definitions load."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from recon_pipeline.defs.resources import SETTINGS_ENV, ReconciliationSettings, resources_from_env
from recon_pipeline_tests.runs import load_code_location


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in os.environ:
        if variable.startswith(("RECON_", "OPENAI_")):
            monkeypatch.delenv(variable)
    return monkeypatch


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("RECON_TOLERANCE_CENTS", "five", "decimal numbers"),
        ("RECON_TOLERANCE_CENTS", "-1", "tolerance_cents must not be negative"),
        ("RECON_GRACE_DAYS", "3d", "RECON_GRACE_DAYS must be a whole number"),
        ("RECON_MATCH_WINDOW_MINUTES", "1", "at most half the match window"),
        ("RECON_THIN_DAY_RATIO", "half", "RECON_THIN_DAY_RATIO must be a number"),
        ("RECON_ACCEPT_THIN_DAYS", "yesterday", "RECON_ACCEPT_THIN_DAYS"),
        ("RECON_OPENAI_SOURCE", "ftp", "RECON_OPENAI_SOURCE must be one of"),
        ("RECON_RESTATEMENT_LOOKBACK_DAYS", "week", "RECON_RESTATEMENT_LOOKBACK_DAYS must be a"),
        ("RECON_RESTATEMENT_LOOKBACK_DAYS", "-1", "LOOKBACK_DAYS must be a number of days from 0"),
    ],
)
def test_a_bad_setting_stops_the_definitions_loading(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(ValueError, match=reason):
        resources_from_env()


def test_the_code_location_refuses_to_load_with_a_bad_tolerance(clean_env) -> None:
    done = load_code_location(RECON_TOLERANCE_CENTS="-5", PYTHONWARNINGS="ignore")
    assert done.returncode != 0
    assert "tolerance_cents must not be negative" in done.stderr


def test_a_set_variable_is_bound_by_name_and_an_unset_one_keeps_the_default(clean_env) -> None:
    clean_env.setenv("RECON_TOLERANCE_CENTS", "7")
    clean_env.setenv("RECON_GRACE_DAYS", "4")
    clean_env.setenv("RECON_THIN_DAY_RATIO", "0.4")
    settings = resources_from_env()["settings"]
    assert isinstance(settings.tolerance_cents, dg.EnvVar)
    assert settings.tolerance_cents.env_var_name == "RECON_TOLERANCE_CENTS"
    assert settings.grace_days.env_var_name == "RECON_GRACE_DAYS"
    assert settings.thin_day_ratio == 0.4
    assert settings.match_window_minutes == ReconciliationSettings().match_window_minutes == 60


def test_every_setting_has_a_variable_and_the_defaults_match_the_core() -> None:
    settings = ReconciliationSettings()
    policy = settings.policy()
    assert set(SETTINGS_ENV) == set(ReconciliationSettings.model_fields) - {"as_of"}
    assert policy.tolerance_cents == 5
    assert policy.grace.days == 3
    assert settings.restatement_lookback() == 7
    assert policy.match_window.total_seconds() == 3600
