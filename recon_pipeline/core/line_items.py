"""What a Costs API `line_item` bills: a model's tokens of one kind, or a named other charge.

OpenAI writes token charges as `<model>[ <modality>], <kind>[, long context]`, optionally
behind a processing tier (`priority | gpt-5.6-sol, output, long context`), e.g.
`gpt-4o-2024-08-06, input`, `gpt-4o-mini-2024-07-18, cached input`,
`gpt-audio-mini-2025-12-15 audio, input`, and everything else by a label such as
`web search tool calls` or `Vector storage`. The rules below read the token form first and
fall back to keyword categories; a label no rule knows is kept verbatim as its own category,
so nothing billed is ever dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

TOKENS = "tokens"
TRANSCRIPTION = "transcription_minutes"
# Categories the catalogue prices per request, so the bill is compared against its rates.
PRICED_CATEGORIES = (TOKENS, TRANSCRIPTION)

# kind: the catalogue component (`pricing._COMPONENT_KEYS`) a token charge is billed at.
KIND_INPUT = "input"
KIND_CACHED_INPUT = "cached_input"
KIND_OUTPUT = "output"
KIND_INPUT_AUDIO = "input_audio"
KIND_OUTPUT_AUDIO = "output_audio"
KIND_AUDIO_MS = "audio_ms"

_TIERS = ("priority", "flex", "scale", "batch", "default")
_TIER_PREFIX = re.compile(rf"^\s*({'|'.join(_TIERS)})\s*\|\s*", re.IGNORECASE)
_TOKEN_FORM = re.compile(
    r"^(?P<model>[^,\s]+)(?:\s+(?P<modality>text|audio|image))?\s*,\s*"
    r"(?P<kind>(?:(?:batch|cached|cache read|cache write|cache writes|audio|text)\s+)*"
    r"(?:input|output))(?P<rest>(?:\s*,\s*[^,]+)*)$",
    re.IGNORECASE,
)
_TRANSCRIPTION_FORM = re.compile(
    r"^(?P<model>whisper-\S+|[^,\s]*transcribe[^,\s]*)\s*,\s*(?:audio|transcription|minutes)",
    re.IGNORECASE,
)
# (keywords any of which names the category, category); first match wins.
_CATEGORY_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("web search",), "web_search_tool_calls"),
    (("file search",), "file_search_tool_calls"),
    (("code interpreter", "container"), "code_interpreter_sessions"),
    (("storage",), "storage"),
    (("fine-tun", "fine tun", "training"), "fine_tuning"),
    (("tts", "characters", "text-to-speech"), "tts_characters"),
    (("image", "dall-e", "dall·e"), "images"),
    (("whisper", "transcri"), TRANSCRIPTION),
)


@dataclass(frozen=True)
class LineItem:
    """A parsed line item. `model`/`kind` only for priced categories; tier from the prefix."""

    category: str
    model: str | None = None
    kind: str | None = None
    service_tier: str = "default"
    batch: bool = False
    long_context: bool = False
    known: bool = True


def _token_kind(words: str, modality: str | None) -> str:
    words = words.lower()
    audio = "audio" in words or (modality or "").lower() == "audio"
    if words.endswith("output"):
        return KIND_OUTPUT_AUDIO if audio else KIND_OUTPUT
    if "cache" in words:
        return KIND_CACHED_INPUT
    return KIND_INPUT_AUDIO if audio else KIND_INPUT


def parse_line_item(line_item: str | None) -> LineItem:
    """One line item by the rules; unknown labels come back verbatim with `known=False`."""
    text = (line_item or "").strip()
    if not text:
        return LineItem(category="(no line item)", known=False)
    tier = "default"
    prefix = _TIER_PREFIX.match(text)
    if prefix:
        tier = prefix.group(1).lower()
        text = text[prefix.end() :]
    batch = tier == "batch"
    if batch:
        tier = "default"
    token = _TOKEN_FORM.match(text)
    if token and (token.group("modality") or "").lower() != "image":
        rest = token.group("rest").lower()
        words = token.group("kind")
        return LineItem(
            category=TOKENS,
            model=token.group("model"),
            kind=_token_kind(words, token.group("modality")),
            service_tier=tier,
            batch=batch or "batch" in words.lower() or "batch" in rest,
            long_context="long context" in rest,
        )
    transcription = _TRANSCRIPTION_FORM.match(text)
    if transcription:
        return LineItem(
            category=TRANSCRIPTION,
            model=transcription.group("model"),
            kind=KIND_AUDIO_MS,
            service_tier=tier,
            batch=batch,
        )
    lowered = text.lower()
    for keywords, category in _CATEGORY_RULES:
        if any(word in lowered for word in keywords):
            if category == TRANSCRIPTION:
                return LineItem(category=category, kind=KIND_AUDIO_MS)
            return LineItem(category=category, service_tier=tier, batch=batch)
    return LineItem(category=line_item or "", known=False)


def parse_line_items(costs: pd.DataFrame) -> pd.DataFrame:
    """`costs` with `category`, `model`, `kind`, `service_tier`, `batch`, `long_context`,
    `known_line_item` added: one parse per distinct line item."""
    names = costs["line_item"].astype(object)
    names = names.where(names.notna(), None)
    distinct = {item: parse_line_item(item) for item in names.drop_duplicates()}
    parsed = [distinct[item] for item in names]

    def column(name: str) -> list[object]:
        return [getattr(item, name) for item in parsed]

    return costs.assign(
        category=column("category"),
        model=column("model"),
        kind=column("kind"),
        service_tier=column("service_tier"),
        batch=pd.array(column("batch"), dtype=bool),
        long_context=pd.array(column("long_context"), dtype=bool),
        known_line_item=pd.array(column("known"), dtype=bool),
    )
