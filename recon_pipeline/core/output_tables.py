"""The tables the pipeline writes, declared once: each column's name, kind and what the
catalog says of it. The core's frames take their column lists from here; `io` creates,
fills and reads the tables from the same declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

from recon_pipeline.core import schema as s


@dataclass(frozen=True)
class Column:
    """An output column. kind: text, bigint, float, bool, date, timestamp, money, usage_id.
    `description` is what the Dagster catalog shows an analyst for the column."""

    name: str
    kind: str
    description: str = ""


@dataclass(frozen=True)
class OutputTable:
    """A table the pipeline owns, replaced one partition at a time: the rows whose `key`
    column (a date: the day, or the month's first day) is the partition's.

    Money columns arrive from the core as `<name>_pico` integers and are stored as exact
    NUMERIC cents named `<name>_cents`.
    """

    name: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    key: str = "usage_date"

    def stored_name(self, column: Column) -> str:
        return f"{column.name}_cents" if column.kind == "money" else column.name

    def frame_name(self, column: Column) -> str:
        return f"{column.name}_pico" if column.kind == "money" else column.name

    def frame_dtypes(self, *, without: tuple[str, ...] = ()) -> dict[str, str]:
        """The pandas dtype of each column of the core's frame (money as pico integers)."""
        return {
            self.frame_name(c): _PANDAS_DTYPES[c.kind]
            for c in self.columns
            if c.name not in without
        }

    @property
    def frame_columns(self) -> list[str]:
        """The columns of the core's frame of this table, in order (money in pico)."""
        return [self.frame_name(c) for c in self.columns]


_PANDAS_DTYPES = {
    "text": "object",
    "bigint": "int64",
    "float": "float64",
    "bool": "bool",
    "date": "object",
    "timestamp": "datetime64[us, UTC]",
    "money": "Int64",
    "usage_id": "object",
}

# The column of every daily table finance reads that says whether the day is final
# (`core/settlement.py`); the core's rules compute the figures, the status is added after.
DAY_STATUS = "day_status"

# Descriptions of the columns several tables share; any other column describes itself.
_SHARED = {
    "usage_date": "UTC day the row belongs to (the partition)",
    "request_id": "OpenAI's response id (chatcmpl-…, resp_…) or the Batch line's custom_id",
    "model": "model snapshot OpenAI reported",
    "service_tier": "service tier OpenAI reported (default, flex, priority, …)",
    "batch": "true when OpenAI ran the request through the Batch API",
    "cached_input_tokens": "input tokens served from OpenAI's prompt cache (part of input_tokens)",
    "reasoning_tokens": "reasoning tokens (part of output_tokens)",
    "audio_ms": "audio duration in milliseconds (Whisper is billed by duration)",
    "price_status": "priced, unknown_model, unpriced_usage or invalid_usage",
    "variance_class": "why the row's actual cost differs from the estimate, one class per row",
    "project_id": "OpenAI project the figure belongs to",
    "day_status": "open (grace period running, or Costs not read since), closed (final) or"
    " restated (OpenAI's billed total changed after the day closed; figures recomputed)",
}


def _cols(*spec: str) -> tuple[Column, ...]:
    """Columns from `name:kind:description` (the description may be left to `_SHARED`)."""
    columns = []
    for item in spec:
        name, kind, *text = item.split(":", 2)
        description = text[0] if text else _SHARED.get(name, "")
        if not description:
            raise ValueError(f"output column {name!r} needs a description (name:kind:description)")
        columns.append(Column(name, kind, description))
    return tuple(columns)


OPENAI_REQUESTS = OutputTable(
    "openai_requests",
    _cols(
        "usage_date:date:UTC day whose match window holds the record (a record near midnight is"
        " stored under both days)",
        "request_id:text",
        "created_at:timestamp:when OpenAI created the response",
        "model:text",
        "service_tier:text",
        "batch:bool",
        "input_tokens:bigint:input tokens OpenAI reported, cached and audio included",
        "cached_input_tokens:bigint",
        "output_tokens:bigint:output tokens OpenAI reported, reasoning and audio included",
        "reasoning_tokens:bigint",
        "input_audio_tokens:bigint:audio input tokens (their own rate)",
        "output_audio_tokens:bigint:audio output tokens (their own rate)",
        "audio_ms:bigint",
        "source:text:where the record came from: an export file, Batch output or the API",
        "metadata_tag:text:the row id the application put in the request's metadata",
    ),
    # No index on created_at: the pipeline reads a day by usage_date, and each index costs
    # every stored record (measured in benchmarks/README.md).
    indexes=(("usage_date",),),
)
# OpenAI's per-request records, whatever the source (export line, Batch output, API): the
# stored table's columns without the day it is stored under.
OPENAI_COLUMNS: dict[str, str] = OPENAI_REQUESTS.frame_dtypes(without=("usage_date",))
RECONCILED_USAGE = OutputTable(
    "reconciled_usage",
    _cols(
        "usage_date:date",
        "usage_id:usage_id:token_usage.id of the logged row",
        "user_id:text:the application's user",
        "action_type:text:the application's route (blueprint, chat, transcribe, …)",
        "model_used:text:model the application logged",
        "openai_request_id:text:response id the application logged (empty: unverifiable)",
        "created_at:timestamp:when the application logged the call",
        "openai_model:text:model snapshot OpenAI reported for the request",
        "service_tier:text",
        "batch:bool",
        "logged_input_tokens:bigint:input tokens the application logged",
        "logged_output_tokens:bigint:output tokens the application logged",
        "openai_input_tokens:bigint:input tokens OpenAI reported",
        "openai_cached_input_tokens:bigint:cached input tokens OpenAI reported",
        "openai_output_tokens:bigint:output tokens OpenAI reported",
        "openai_reasoning_tokens:bigint:reasoning tokens OpenAI reported",
        "openai_audio_ms:bigint:audio milliseconds OpenAI reported",
        "estimated_cost:money:the application's own estimate, US cents",
        "actual_cost:money:OpenAI's usage priced at that day's official price, US cents (exact)",
        "variance:money:actual - estimated, US cents",
        "variance_pct:float:variance in percent of the actual cost",
        "variance_class:text",
        "reconciliation_status:text:pending, matched, discrepancy, not_found or unverifiable"
        " (the status written back)",
        "model_mismatch:bool:OpenAI ran another model than the one logged",
        "token_mismatch:bool:OpenAI's token counts differ from the logged ones",
        "price_status:text",
        "openai_source:text:where OpenAI's record came from",
        "match_method:text:how the row was paired with OpenAI's record: request_id,"
        " metadata_tag or fingerprint (empty: no record verified it)",
        "matched_request_id:text:id of the OpenAI record the row was paired with",
    ),
    indexes=(("usage_date",), ("usage_id",)),
)
UNLOGGED_OPENAI_REQUESTS = OutputTable(
    "unlogged_openai_requests",
    _cols(
        "usage_date:date",
        "request_id:text",
        "created_at:timestamp:when OpenAI created the response",
        "model:text",
        "service_tier:text",
        "batch:bool",
        "input_tokens:bigint:input tokens OpenAI reported",
        "cached_input_tokens:bigint",
        "output_tokens:bigint:output tokens OpenAI reported",
        "reasoning_tokens:bigint",
        "audio_ms:bigint",
        "actual_cost:money:OpenAI's usage priced at that day's official price, US cents",
        "price_status:text",
        "variance_class:text",
        "source:text:where the record came from",
    ),
    indexes=(("usage_date",),),
)
DAILY_VARIANCE_SUMMARY = OutputTable(
    "daily_variance_summary",
    _cols(
        "usage_date:date",
        "action_type:text:the application's route",
        "model_used:text:model the application logged",
        "requests:bigint:logged requests",
        *(f"{status}:bigint:requests with status {status}" for status in s.STATUSES),
        *(
            f"verified_by_{method}:bigint:requests paired with OpenAI's record by {method}"
            for method in s.MATCH_METHODS
        ),
        "estimated_cost:money:the application's estimate, US cents",
        "actual_cost:money:actual cost, US cents (exact)",
        "variance:money:actual - estimated, US cents",
        "match_rate:float:matched / (matched + discrepancy)",
        "day_status:text",
    ),
    indexes=(("usage_date",),),
)
OPENAI_DAILY_USAGE = OutputTable(
    "openai_daily_usage",
    _cols(
        "usage_date:date",
        "endpoint:text:completions, embeddings or audio_transcriptions",
        "model:text",
        "batch:bool",
        "service_tier:text",
        "project_id:text",
        "input_tokens:bigint:input tokens, cached included",
        "input_cached_tokens:bigint:cached input tokens",
        "output_tokens:bigint:output tokens",
        "input_audio_tokens:bigint:audio input tokens",
        "output_audio_tokens:bigint:audio output tokens",
        "num_model_requests:bigint:requests",
        "seconds:bigint:audio seconds (transcriptions)",
    ),
    indexes=(("usage_date",),),
)
OPENAI_DAILY_COSTS = OutputTable(
    "openai_daily_costs",
    _cols(
        "usage_date:date",
        "line_item:text:what OpenAI billed (a model's input or output, a tool, storage, …)",
        "project_id:text",
        "amount:money:billed amount, US cents (exact)",
        "currency:text:currency OpenAI reported (usd)",
        "quantity:float:billed quantity where OpenAI gives one (amount / quantity: the unit price)",
    ),
    indexes=(("usage_date",),),
)
INVOICE_CHECK = OutputTable(
    "invoice_check",
    _cols(
        "usage_date:date",
        "project_id:text:OpenAI project in scope, or (all) for the scope as one",
        "model:text:model, or (all) for the whole day",
        "openai_requests:bigint:requests OpenAI's Usage API counted",
        "openai_input_tokens:bigint:input tokens OpenAI's Usage API counted",
        "openai_output_tokens:bigint:output tokens OpenAI's Usage API counted",
        "logged_requests:bigint:requests the application logged",
        "logged_input_tokens:bigint:input tokens the application logged",
        "logged_output_tokens:bigint:output tokens the application logged",
        "billed:money:per model, OpenAI's usage priced at the catalogue; (all): the Costs API"
        " total, US cents",
        "reconciled_actual:money:actual cost of the reconciled rows, US cents",
        "unlogged_actual:money:actual cost of requests no row logged, US cents",
        "unattributed:money:billed - reconciled_actual, US cents",
        "unattributed_share:float:unattributed / billed",
        "billed_source:text:costs_api, usage_api or none",
        "day_status:text",
    ),
    indexes=(("usage_date",),),
)
INVOICE_GAP = OutputTable(
    "invoice_gap",
    _cols(
        "usage_date:date",
        "project_id:text:OpenAI project, or (all) for the scope as one",
        "cause:text:why billed and reconciled differ: unlogged_requests,"
        " rows_without_request_id, pending_rows, unpriced_requests, non_token_charges,"
        " price_difference, other_projects, or the residual no cause explains",
        "detail:text:what within the cause (a model, a line item, a project)",
        "amount:money:the cause's share of billed - reconciled, US cents",
        "share_of_billed:float:amount / billed",
        "day_status:text",
    ),
    indexes=(("usage_date",),),
)
DAY_SETTLEMENT = OutputTable(
    "day_settlement",
    _cols(
        "usage_date:date",
        "project_id:text:OpenAI project in scope, or (all) for the scope as one",
        "day_status:text",
        "billed:money:the Costs API total as last read, US cents",
        "billed_at_close:money:the total when the day closed (the first read after the grace"
        " period), US cents",
        "previous_billed:money:the total before the last restatement, US cents",
        "read_at:timestamp:when the Costs data of the day was last read",
        "closed_at:timestamp:when the day closed",
        "restated_at:timestamp:when the last restatement was found",
        "restatements:bigint:how many times the total changed after the day closed",
    ),
    indexes=(("usage_date",),),
)
MONTHLY_STATEMENT = OutputTable(
    "monthly_statement",
    _cols(
        "month:date:first UTC day of the month the statement covers (the partition)",
        "project_id:text:OpenAI project in scope, or (all) for the scope as one",
        "line:text:billed, reconciled_actual, a cause of the gap (as invoice_gap names them),"
        " not_yet_billed or residual; billed - reconciled_actual = the sum of the others",
        "detail:text:what within the line (a model, a line item, a project, a day)",
        "amount:money:the month's amount of the line: the exact sum of its days, US cents",
        "share_of_billed:float:amount / the month's billed USD of the projects in scope",
        "match_rate:float:matched / (matched + discrepancy) over the month's rows ((all) only)",
        "request_id_coverage:float:share of the month's logged rows that carry OpenAI's"
        " request id ((all) only)",
        "days:bigint:days of the month the statement covers (from RECON_START_DATE on)",
        "days_reconciled:bigint:days of the month with a stored reconciliation",
        "days_open:bigint:days not yet closed, days never reconciled and days to come included",
        "days_restated:bigint:closed days whose billed total OpenAI changed afterwards",
    ),
    indexes=(("month",),),
    key="month",
)
# What the write-back needs of the results, staged from memory (`Database.write_back_rows`).
WRITE_BACK_ROWS = OutputTable(
    "recon_write_back",
    _cols(
        "usage_id:usage_id:token_usage.id",
        "openai_request_id:text:response id the row logged",
        "estimated_cost:money:the row's estimate",
        "actual_cost:money:the row's actual cost",
        "reconciliation_status:text:the row's status",
    ),
)
# What each step last read of a day, so that a re-run of an unchanged day can skip it
# (`io.day_inputs`); the pipeline's own bookkeeping, not an analyst table.
DAY_INPUTS = OutputTable(
    "recon_day_inputs",
    _cols(
        "usage_date:date",
        "step:text:the step (asset) that read the day",
        "inputs:text:digest of everything the step's result depends on",
        "recorded_at:timestamp:when the step last wrote the day",
    ),
    indexes=(("usage_date",),),
)
# The tables analysts query, one per asset of the same name.
OUTPUT_TABLES = (
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    DAILY_VARIANCE_SUMMARY,
    OPENAI_DAILY_USAGE,
    OPENAI_DAILY_COSTS,
    INVOICE_CHECK,
    INVOICE_GAP,
    DAY_SETTLEMENT,
    MONTHLY_STATEMENT,
)
