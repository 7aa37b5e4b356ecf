"""RECON_OPENAI_SOURCE: which source of per-request records a run reads."""

import pytest

from recon_pipeline.core.sources import choose_sources


@pytest.mark.parametrize(
    ("choice", "key", "folder", "chosen"),
    [
        ("auto", True, True, ("api", "exports")),
        ("auto", True, False, ("api",)),
        ("auto", False, True, ("exports",)),
        ("both", True, True, ("api", "exports")),
        ("exports", True, True, ("exports",)),
        ("api", True, False, ("api",)),
    ],
)
def test_the_sources_chosen(choice: str, key: bool, folder: bool, chosen: tuple) -> None:
    assert choose_sources(choice, key, folder) == chosen


@pytest.mark.parametrize(
    ("choice", "key", "folder", "reason"),
    [
        ("auto", False, False, "set OPENAI_API_KEY or RECON_USAGE_EXPORT_DIR"),
        ("api", False, True, "RECON_OPENAI_SOURCE=api needs OPENAI_API_KEY"),
        ("both", True, False, "RECON_OPENAI_SOURCE=both needs RECON_USAGE_EXPORT_DIR"),
        ("ftp", True, True, "must be one of"),
    ],
)
def test_a_source_not_configured_is_refused(
    choice: str, key: bool, folder: bool, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        choose_sources(choice, key, folder)
