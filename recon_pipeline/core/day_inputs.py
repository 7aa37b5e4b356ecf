"""Whether a step may skip a day: it may when everything its result for that day depends on
is what it was when the step last wrote the day, digest for digest.

What goes into a digest is the caller's: fingerprints of the rows and files read, the
settings and rules applied, and the state of the clock the rules look at (inside the grace
period or past it). A digest that differs in anything, or no digest recorded, means the day
is done again; so does RECON_FULL_RERUN.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def inputs_digest(parts: Mapping[str, object]) -> str:
    """A stable digest of named parts (any JSON-able values; other values by their repr)."""
    text = json.dumps(parts, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def may_skip(recorded: str | None, current: str | None, full_rerun: bool) -> bool:
    """Skip only a day whose inputs are known (`current`) and equal what was recorded."""
    return not full_rerun and current is not None and recorded == current
