"""Database URLs as they may be shown: the password masked, wherever the URL carries it.

A password can sit in the authority (`user:pw@host`) or in the query string (`?password=`,
`?sslpassword=`, `?passfile=`, which libpq and psycopg accept too). Both are masked, and
a string that does not even parse as a URL is masked the same way, by pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

import sqlalchemy as sa

MASK = "***"
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile"})

# `scheme://user:` then the password, up to the last `@` before any query string.
_AUTHORITY = re.compile(r"^([^:/?#]*://[^:/@?#]*:)([^?#]*)@")
# `password=`, `sslpassword=` or `passfile=`, then the value up to the next `&`.
_QUERY = re.compile(r"((?:ssl)?password|passfile)=([^&]*)", re.IGNORECASE)


def _parsed(url: str) -> sa.URL | None:
    try:
        return sa.make_url(url)
    except Exception:
        return None


def masked_url(url: str) -> str:
    """`url` with the password of its authority and its secret query values shown as ***."""
    parsed = _parsed(url)
    if parsed is not None:
        shown = parsed.render_as_string(hide_password=True)
    else:
        shown = _AUTHORITY.sub(rf"\1{MASK}@", url, count=1)
    return _QUERY.sub(rf"\1={MASK}", shown)


def url_secrets(url: str) -> set[str]:
    """Every form (raw and decoded) of the secrets `url` carries, even if it did not parse."""
    found: set[str] = set()
    parsed = _parsed(url)
    if parsed is not None:
        if parsed.password:
            found.add(str(parsed.password))
        for key, value in parsed.query.items():
            if key.lower() in SECRET_QUERY_KEYS:
                found.update((value,) if isinstance(value, str) else value)
    authority = _AUTHORITY.search(url)
    if authority:
        found |= {authority.group(2), unquote(authority.group(2))}
    for match in _QUERY.finditer(url):
        found |= {match.group(2), unquote(match.group(2))}
    return {secret for secret in found if secret}


def scrub_url_secrets(message: str, url: str) -> str:
    """`message` with every secret `url` carries replaced by ***."""
    return scrub_secrets(message, url_secrets(url))


def scrub_secrets(message: str, secrets: Iterable[str]) -> str:
    """`message` with each of `secrets` replaced by ***, the longest first (so that a secret
    holding another is masked whole). Scrub before folding the message's white space: a
    secret may hold white space of its own."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, MASK)
    return message


def error_detail(error: BaseException, secrets: Iterable[str]) -> str:
    """A driver's error on one line, for a message of ours: `secrets` masked first (they may
    hold white space), then its white space folded; its type's name when it says nothing."""
    return " ".join(scrub_secrets(str(error), secrets).split()) or type(error).__name__
