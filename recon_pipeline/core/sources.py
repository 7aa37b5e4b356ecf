"""Where OpenAI's per-request records come from (RECON_OPENAI_SOURCE): a rule of
configuration, refused with the variable to set rather than left to fail at the first read."""

from __future__ import annotations

SOURCES = ("auto", "exports", "api", "both")


def choose_sources(choice: str, has_api_key: bool, exports_configured: bool) -> tuple[str, ...]:
    """`auto`: the API when a key is set, the export folder when one is configured (or
    embedded), both when both are; `exports`, `api`, `both` insist on what they name."""
    if choice not in SOURCES:
        raise ValueError(f"RECON_OPENAI_SOURCE must be one of {SOURCES}, not {choice!r}")
    if choice == "auto":
        chosen = (("api",) if has_api_key else ()) + (("exports",) if exports_configured else ())
        if not chosen:
            raise ValueError(
                "no source of OpenAI records is configured: set OPENAI_API_KEY or "
                "RECON_USAGE_EXPORT_DIR"
            )
        return chosen
    chosen = ("api", "exports") if choice == "both" else (choice,)
    if "api" in chosen and not has_api_key:
        raise ValueError(f"RECON_OPENAI_SOURCE={choice} needs OPENAI_API_KEY")
    if "exports" in chosen and not exports_configured:
        raise ValueError(f"RECON_OPENAI_SOURCE={choice} needs RECON_USAGE_EXPORT_DIR")
    return chosen
