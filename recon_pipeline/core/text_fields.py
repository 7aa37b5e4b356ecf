"""Text that may reach a PostgreSQL text column: refused at the parser, naming the field, rather
than inside a COPY that names no file.

PostgreSQL refuses NUL in text, and a lone surrogate (`"\\ud800"` in JSON, or a byte that is
not UTF-8 read with `surrogateescape`) cannot be encoded as UTF-8 at all. Ids, model names,
tiers and line items are short tokens, so a value longer than `MAX_TEXT_CHARS` is refused
too: it is damage, not data. Other control characters are stored as they are.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

MAX_TEXT_CHARS = 512

# Surrogates only as Python strings: pyarrow holds valid UTF-8.
_REFUSED = re.compile("[\x00\ud800-\udfff]")
_REFUSED_RE2 = r"\x00"


class TextFieldError(ValueError):
    """A text value PostgreSQL would refuse, or too long to be what the field holds."""


def check_text(value: str, name: str) -> str:
    """`value` unchanged, or a `TextFieldError` naming the field and what is wrong."""
    if len(value) > MAX_TEXT_CHARS:
        raise TextFieldError(
            f"field {name!r} is {len(value)} characters long, over the {MAX_TEXT_CHARS} allowed"
        )
    found = _REFUSED.search(value)
    if found is not None:
        char = found.group()
        kind = "NUL" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
        raise TextFieldError(
            f"field {name!r} holds {kind} at character {found.start()}, which PostgreSQL "
            "text cannot store"
        )
    return value


def check_optional_text(value: Any, name: str) -> Any:
    """`check_text` for a string; any other value is returned for its caller to judge."""
    return check_text(value, name) if isinstance(value, str) else value


def any_refused(column: pa.ChunkedArray | pa.Array) -> bool:
    """Whether any string of a pyarrow column is one `check_text` refuses (nulls are not)."""
    if len(column) == 0:
        return False
    too_long = pc.greater(pc.utf8_length(column), MAX_TEXT_CHARS)
    refused = pc.or_kleene(too_long, pc.match_substring_regex(column, _REFUSED_RE2))
    return bool(pc.any(refused).as_py())
