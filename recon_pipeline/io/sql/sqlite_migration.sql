-- Reconciliation columns, indexes and analytics view for the embedded SQLite demo.
-- Money is NUMERIC, timestamps are ISO-8601 TEXT. recon_pipeline.io.migrations runs each
-- named block only when needed, in one transaction, after substituting the validated,
-- quoted names in braces. An index or view name carries the schema; its table does not.

-- name: add_column.openai_request_id
ALTER TABLE {table} ADD COLUMN openai_request_id TEXT

-- name: add_column.openai_created
ALTER TABLE {table} ADD COLUMN openai_created INTEGER

-- name: add_column.system_fingerprint
ALTER TABLE {table} ADD COLUMN system_fingerprint TEXT

-- name: add_column.actual_cost_cents
ALTER TABLE {table} ADD COLUMN actual_cost_cents NUMERIC

-- name: add_column.reconciled_at
ALTER TABLE {table} ADD COLUMN reconciled_at TEXT

-- SQLite cannot add a constraint later, so the CHECK rides on the column.
-- name: add_column.reconciliation_status
ALTER TABLE {table} ADD COLUMN reconciliation_status TEXT NOT NULL DEFAULT 'pending'
    CONSTRAINT {status_check_name} CHECK (reconciliation_status IN ({statuses}))

-- name: index.created_at
CREATE INDEX IF NOT EXISTS {created_at_idx} ON {table_name} (created_at)

-- name: index.openai_request_id
CREATE INDEX IF NOT EXISTS {request_id_idx} ON {table_name} (openai_request_id)
    WHERE openai_request_id IS NOT NULL

-- name: index.pending
CREATE INDEX IF NOT EXISTS {pending_idx} ON {table_name} (created_at)
    WHERE reconciliation_status = 'pending'

-- name: drop_view
DROP VIEW IF EXISTS {view}

-- name: view
CREATE VIEW {view} AS
SELECT
    id,
    user_id,
    action_type,
    model_used,
    input_tokens,
    output_tokens,
    calculated_cost_cents,
    created_at,
    openai_request_id,
    openai_created,
    system_fingerprint,
    actual_cost_cents,
    reconciled_at,
    reconciliation_status,
    COALESCE(actual_cost_cents, calculated_cost_cents) AS best_cost_cents,
    actual_cost_cents - calculated_cost_cents AS variance_cents
FROM {table_name}

-- name: demo_table
CREATE TABLE IF NOT EXISTS {table} (
    id INTEGER PRIMARY KEY,
    user_id TEXT,
    action_type TEXT NOT NULL,
    model_used TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER,
    audio_seconds NUMERIC,
    calculated_cost_cents NUMERIC,
    created_at TEXT NOT NULL,
    openai_request_id TEXT,
    openai_created INTEGER,
    system_fingerprint TEXT
)
