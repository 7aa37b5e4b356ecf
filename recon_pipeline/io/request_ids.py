"""The application's logged request id as the pipeline reads it, in one place for both
databases: the white space a capture may leave around it (a trailing newline, a space) is
dropped and a blank id is no id, so `' chatcmpl-1\n'` matches OpenAI's `chatcmpl-1` and
`'   '` is unverifiable like `''`. Case is kept: OpenAI's ids are case-sensitive."""

from __future__ import annotations

# Space, tab, carriage return, line feed: what surrounds an id captured from a header or a log.
PADDING_CODES = (32, 9, 13, 10)


def postgres_record_id(column: str) -> str:
    """OpenAI's own id of a stored record: never padded (its lines are checked as they are
    read), so only a blank one is none, as SQLite's `_split` takes it too."""
    return f"NULLIF({column}::text, '')"


def postgres_request_id(column: str) -> str:
    padding = " || ".join(f"chr({code})" for code in PADDING_CODES)
    return f"NULLIF(btrim({column}::text, {padding}), '')"


def sqlite_request_id(column: str) -> str:
    padding = ", ".join(str(code) for code in PADDING_CODES)
    return f"NULLIF(trim(CAST({column} AS TEXT), char({padding})), '')"
