"""The tables the pipeline owns (declared in `core/output_tables.py`), and the columns of
`token_usage` it reads and writes."""

from __future__ import annotations

from recon_pipeline.core.output_tables import (
    DAILY_VARIANCE_SUMMARY,
    DAY_INPUTS,
    DAY_SETTLEMENT,
    INVOICE_CHECK,
    INVOICE_GAP,
    MONTHLY_STATEMENT,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    OPENAI_REQUESTS,
    OUTPUT_TABLES,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    WRITE_BACK_ROWS,
    Column,
    OutputTable,
)

__all__ = [
    "DAILY_VARIANCE_SUMMARY",
    "DAY_INPUTS",
    "DAY_SETTLEMENT",
    "INVOICE_CHECK",
    "INVOICE_GAP",
    "MONEY_COLUMNS",
    "MONTHLY_STATEMENT",
    "OPENAI_DAILY_COSTS",
    "OPENAI_DAILY_USAGE",
    "OPENAI_REQUESTS",
    "OUTPUT_TABLES",
    "RECONCILED_USAGE",
    "REQUIRED_USAGE_COLUMNS",
    "UNLOGGED_OPENAI_REQUESTS",
    "USAGE_COLUMNS",
    "WRITE_BACK_ROWS",
    "WRITTEN_USAGE_COLUMNS",
    "Column",
    "OutputTable",
    "RowSecurityError",
    "SchemaNotReadyError",
]


class SchemaNotReadyError(RuntimeError):
    """`token_usage` lacks the reconciliation columns: the migration has not been applied."""


class RowSecurityError(SchemaNotReadyError):
    """Row-level security would hide rows of `token_usage` from the pipeline's role."""


# The columns of token_usage the pipeline reads, then the three it writes: (type, meaning).
USAGE_COLUMNS = {
    "id": ("uuid or bigint", "the row's primary key"),
    "action_type": ("text", "the application's route that made the call"),
    "model_used": ("text", "model the application asked for"),
    "input_tokens": ("integer", "input tokens the application logged"),
    "output_tokens": ("integer", "output tokens the application logged"),
    "calculated_cost_cents": ("integer or numeric", "the application's own estimate, US cents"),
    "created_at": ("timestamptz", "when the call was logged; its UTC day is the partition"),
    "openai_request_id": ("text", "OpenAI's response id; empty rows are unverifiable"),
    "actual_cost_cents": ("numeric", "written back: the verified cost, US cents"),
    "reconciled_at": ("timestamptz", "written back: when the row's verdict last changed"),
    "reconciliation_status": (
        "text",
        "written back: pending, matched, discrepancy, not_found or unverifiable",
    ),
}
REQUIRED_USAGE_COLUMNS = tuple(USAGE_COLUMNS)
WRITTEN_USAGE_COLUMNS = REQUIRED_USAGE_COLUMNS[-3:]

# The money columns of the results (`<name>_cents` stored, `<name>_pico` in the core).
MONEY_COLUMNS = ("estimated_cost", "actual_cost", "variance")
