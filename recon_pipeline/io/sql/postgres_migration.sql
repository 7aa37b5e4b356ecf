-- Reconciliation columns, status CHECK, indexes and analytics view on the application's
-- token_usage table (PostgreSQL). recon_pipeline.io.migrations runs each named block only
-- when the catalogue says it is needed, all in one transaction, after substituting the
-- validated, quoted names in braces.

-- name: lock_timeout
SET LOCAL lock_timeout = '10s'

-- Serialises concurrent runs of recon-migrate within a database.
-- name: advisory_lock
SELECT pg_advisory_xact_lock({lock_key})

-- Every name below is schema-qualified, and the captured view definitions are read under
-- this setting, so they name every object by its schema.
-- name: search_path
SET LOCAL search_path = ''

-- name: add_column.openai_request_id
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS openai_request_id text

-- name: add_column.openai_created
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS openai_created bigint

-- name: add_column.system_fingerprint
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS system_fingerprint text

-- Ten decimal places of a cent: exact pico-dollars.
-- name: add_column.actual_cost_cents
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS actual_cost_cents numeric(20, 10)

-- name: add_column.reconciled_at
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS reconciled_at timestamptz

-- A constant default is stored in the catalogue (PostgreSQL 11+): no table rewrite.
-- name: add_column.reconciliation_status
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS reconciliation_status text NOT NULL DEFAULT 'pending'

-- NOT VALID then VALIDATE, the pattern that keeps the scan out of the exclusive lock. Inside
-- this single transaction the lock taken by ADD COLUMN is held until commit all the same;
-- lock_timeout bounds the wait for it, and the scan is one pass over the table.
-- Rows holding another value keep the constraint NOT VALID (new rows are checked all the
-- same) until they are dealt with; recon-migrate then validates it.
-- name: add_status_check
ALTER TABLE {table} ADD CONSTRAINT {status_check}
    CHECK (reconciliation_status IN ({statuses})) NOT VALID

-- name: validate_status_check
ALTER TABLE {table} VALIDATE CONSTRAINT {status_check}

-- The pipeline reads one UTC day: created_at >= $1 AND created_at < $2.
-- name: index.created_at
CREATE INDEX IF NOT EXISTS {created_at_idx} ON {table} (created_at)

-- name: index.openai_request_id
CREATE INDEX IF NOT EXISTS {request_id_idx} ON {table} (openai_request_id)
    WHERE openai_request_id IS NOT NULL

-- Whole cents cannot hold pico-dollars. Rewrites the table; the views that read the column
-- are dropped before and recreated after it (io/view_rebuild.py).
-- name: widen_actual_cost_cents
ALTER TABLE {table} ALTER COLUMN actual_cost_cents TYPE numeric(20, 10)

-- The re-check of rows OpenAI had not reported yet.
-- name: index.pending
CREATE INDEX IF NOT EXISTS {pending_idx} ON {table} (created_at)
    WHERE reconciliation_status = 'pending'

-- Explicit columns, never *, so the view's shape does not follow the table's. Its name is
-- the pipeline's own (<table>_reconciliation); the comment marks it as the pipeline's, the
-- only view recon-migrate ever replaces.
-- name: view
CREATE OR REPLACE VIEW {view} AS
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
FROM {table}

-- name: view_comment
COMMENT ON VIEW {view} IS {view_marker}

-- The application's table as it looks before this migration (embedded demo and tests).
-- name: demo_table
CREATE TABLE IF NOT EXISTS {table} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text,
    action_type text NOT NULL,
    model_used text NOT NULL,
    input_tokens integer NOT NULL,
    output_tokens integer NOT NULL,
    cached_input_tokens integer,
    audio_seconds numeric,
    calculated_cost_cents numeric(12, 6),
    created_at timestamptz NOT NULL,
    openai_request_id text,
    openai_created bigint,
    system_fingerprint text
)
