"""Names shared by every layer: statuses, classes, and the columns of each frame.

Money travels through the core as integer pico-dollars (1e-12 USD) in int64 columns, so
every sum is exact; it is turned into NUMERIC cents only when written.
"""

from __future__ import annotations

PICO_PER_CENT = 10**10
PICO_PER_USD = 10**12

# reconciliation_status values written back to token_usage (the CHECK constraint's set).
PENDING = "pending"
MATCHED = "matched"
DISCREPANCY = "discrepancy"
NOT_FOUND = "not_found"
UNVERIFIABLE = "unverifiable"
STATUSES = (PENDING, MATCHED, DISCREPANCY, NOT_FOUND, UNVERIFIABLE)

# variance_class: the finer reason analysts read, one per row.
CLASS_EXACT = "exact"
CLASS_WITHIN_TOLERANCE = "within_tolerance"
CLASS_OVER_ESTIMATE = "over_estimate"
CLASS_UNDER_ESTIMATE = "under_estimate"
CLASS_MODEL_MISMATCH = "model_mismatch"
CLASS_TOKEN_MISMATCH = "token_count_mismatch"
CLASS_DUPLICATE_ID = "duplicate_request_id"
CLASS_UNPRICED = "unpriced_model"
CLASS_NO_ESTIMATE = "missing_estimate"
CLASS_AWAITING_OPENAI = "awaiting_openai"
CLASS_MISSING_AT_OPENAI = "missing_at_openai"
CLASS_NO_REQUEST_ID = "no_request_id"
CLASS_LOGGED_NOWHERE = "logged_nowhere"
CLASS_AMBIGUOUS_FINGERPRINT = "ambiguous_fingerprint"
VARIANCE_CLASSES = (
    CLASS_EXACT,
    CLASS_WITHIN_TOLERANCE,
    CLASS_OVER_ESTIMATE,
    CLASS_UNDER_ESTIMATE,
    CLASS_MODEL_MISMATCH,
    CLASS_TOKEN_MISMATCH,
    CLASS_DUPLICATE_ID,
    CLASS_UNPRICED,
    CLASS_NO_ESTIMATE,
    CLASS_AWAITING_OPENAI,
    CLASS_MISSING_AT_OPENAI,
    CLASS_NO_REQUEST_ID,
    CLASS_LOGGED_NOWHERE,
    CLASS_AMBIGUOUS_FINGERPRINT,
)

# match_method: how a row was paired with OpenAI's record (None: it was not).
MATCH_REQUEST_ID = "request_id"
MATCH_METADATA_TAG = "metadata_tag"
MATCH_FINGERPRINT = "fingerprint"
MATCH_METHODS = (MATCH_REQUEST_ID, MATCH_METADATA_TAG, MATCH_FINGERPRINT)

# The key of the request's `metadata` under which the application puts its row's id.
DEFAULT_METADATA_ROW_KEY = "token_usage_id"

# The application's rows, as the database layer hands them to the core.
LOGGED_COLUMNS: dict[str, str] = {
    "usage_id": "object",
    "user_id": "object",
    "action_type": "object",
    "model_used": "object",
    "input_tokens": "Int64",
    "output_tokens": "Int64",
    "cached_input_tokens": "Int64",
    "calculated_cost_pico": "Int64",
    "created_at": "datetime64[us, UTC]",
    "openai_request_id": "object",
    "openai_created": "Int64",
    "audio_ms": "Int64",
}
